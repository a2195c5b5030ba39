"""Agreement-weighted ensembling of a specialist and a generalist model (``nnzoo predict --ensemble SPECIALIST
GENERALIST --ensemble-weighting agreement``).

A model trained on the labeled scanners (the *specialist*, e.g. plain ``nnUNetTrainer``) is usually the most
accurate on images like its training images and can fail completely on another contrast; a domain-general model
(the *generalist*, e.g. ``nnUNetTrainerMIND``) holds up on other contrasts but gives up some accuracy on the
specialist's own. nnU-Net's ensembling averages the two with equal weights, which keeps half of each failure. Here
each case weighs them by how much they agree: the specialist's weight is the agreement ``a`` of the two models'
segmentations (the mean Dice over the foreground labels, :func:`agreement`), the generalist's ``1 - a``, and the
segmentation is nnU-Net's conversion of ``a p_specialist + (1 - a) p_generalist``. Where both are right they agree
and the specialist decides; where the specialist is out of its depth the two disagree and the generalist decides.
The rule has no parameter, needs no label and no domain name at prediction time; each case's agreement and
weights are written to ``ensemble_weights.json`` (an out-of-domain signal in itself).

This is nnzoo's own combination rule, not a published method: it is measured in the domain-shift benchmark
(``benchmarks/domain_shift.py``, row ``source only + nnUNetTrainerMIND (agreement)``), with what it costs (two
predictions per case).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import NnzooError

__all__ = ["WEIGHTINGS", "WEIGHTS_FILE", "agreement", "mix", "merge_by_agreement"]

#: ``--ensemble-weighting`` values: ``mean`` (nnU-Net's equal average) and ``agreement`` (this module)
WEIGHTINGS = ("mean", "agreement")
WEIGHTS_FILE = "ensemble_weights.json"


def agreement(seg_a: np.ndarray, seg_b: np.ndarray, labels: list[int]) -> float:
    """How much two segmentations agree: the mean over ``labels`` of their Dice (a label neither has counts 1).

    Args:
        seg_a: a label map.
        seg_b: a label map of the same shape.
        labels: the foreground labels to compare.

    Returns:
        A number in ``[0, 1]``; 1 when no foreground label is given.

    Raises:
        ValueError: the shapes differ.
    """
    from .metrics import dice  # nnzoo evaluate's Dice (NaN where both masks are empty)

    if seg_a.shape != seg_b.shape:
        raise ValueError(f"segmentations of shapes {seg_a.shape} and {seg_b.shape} cannot be compared")
    scores = [dice(seg_a == k, seg_b == k) for k in labels]
    return float(np.mean([1.0 if math.isnan(s) else s for s in scores])) if scores else 1.0


def mix(p_specialist: np.ndarray, p_generalist: np.ndarray, weight: float) -> np.ndarray:
    """``weight * p_specialist + (1 - weight) * p_generalist`` in float32.

    Raises:
        ValueError: ``weight`` outside ``[0, 1]`` or the shapes differ.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight}: must be in [0, 1]")
    if p_specialist.shape != p_generalist.shape:
        raise ValueError(f"probabilities of shapes {p_specialist.shape} and {p_generalist.shape} cannot be mixed")
    return (weight * p_specialist.astype(np.float32) + (1.0 - weight) * p_generalist.astype(np.float32)).astype(
        np.float32)


def merge_by_agreement(members: list[Path], output_dir: Path, *, dataset_json: dict, plans: dict,
                       names: list[str] | None = None) -> dict[str, dict]:
    """Merge two members' predictions (``case.npz`` + ``case.pkl``, as ``predict --save-probabilities`` writes)
    case by case with agreement weights, into ``output_dir`` (segmentations and :data:`WEIGHTS_FILE`).

    Args:
        members: the specialist's and the generalist's prediction folders, in that order.
        output_dir: where ``case<file_ending>`` and :data:`WEIGHTS_FILE` are written.
        dataset_json: the models' ``dataset.json`` (labels, file ending).
        plans: the models' ``plans.json`` (the image writer).
        names: the members' names for the record (default: the folders).

    Returns:
        ``{case: {"agreement": a, "weights": [a, 1 - a]}}``.

    Raises:
        NnzooError: not two members, or a case one member predicted and the other did not.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if len(members) != 2:
        raise NnzooError(f"agreement weighting takes 2 models (a specialist and a generalist), got {len(members)}")
    cases = [sorted(p.stem for p in Path(m).glob("*.npz")) for m in members]
    if cases[0] != cases[1]:
        odd = sorted(set(cases[0]) ^ set(cases[1]))
        raise NnzooError(f"the two models' predictions differ in cases ({', '.join(odd[:5])}); predict both again")
    pm = PlansManager(plans)
    label_manager = pm.get_label_manager(dataset_json)
    writer = pm.image_reader_writer_class()
    labels = [int(k) for k in label_manager.foreground_labels]
    output_dir.mkdir(parents=True, exist_ok=True)
    weights: dict[str, dict] = {}
    for n, case in enumerate(cases[0], 1):
        p_s, p_g = (np.load(Path(m) / f"{case}.npz")["probabilities"] for m in members)
        seg_s, seg_g = (label_manager.convert_probabilities_to_segmentation(p) for p in (p_s, p_g))
        a = agreement(np.asarray(seg_s), np.asarray(seg_g), labels)
        seg = label_manager.convert_probabilities_to_segmentation(mix(p_s, p_g, a))
        writer.write_seg(seg, str(output_dir / f"{case}{dataset_json['file_ending']}"),
                         load_pickle(str(Path(members[0]) / f"{case}.pkl")))
        weights[case] = {"agreement": round(a, 6), "weights": [round(a, 6), round(1.0 - a, 6)]}
        print(f"nnzoo: [{n}/{len(cases[0])}] {case}: agreement {a:.3f}", flush=True)
    record = {"weighting": "agreement", "members": [str(m) for m in (names or members)],
              "rule": "specialist weight = mean foreground Dice between the two models' segmentations; generalist "
                      "weight = 1 - that", "cases": weights}
    (output_dir / WEIGHTS_FILE).write_text(json.dumps(record, indent=2))
    return weights
