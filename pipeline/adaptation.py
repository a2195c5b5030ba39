"""``nnzoo predict --adapt``: the options, the source statistics a method needs, ``adaptation.json``.

The methods are :mod:`nnzoo.trainers.adapt` (TENT, VPTTA, GraTa); the predictor that runs them is
:class:`nnzoo.pipeline.inference.AdaptingPredictor`. ``adaptation.json`` beside the predictions records the
method, every hyperparameter used, episodic or continual, the seconds spent adapting per case (all folds) and
how far adaptation moved the model per case (``relative_change_per_case``, mean over folds); with ``-num_parts`` each part writes ``adaptation_part<ID>.json``. ``--continue`` refuses to complete a folder
predicted with another adaptation. Nothing of the model on disk changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import NnzooError

__all__ = ["source_stats_file", "check_adapt_options", "load_adaptation", "adaptation_settings", "record_file", "write_record",
           "check_previous_record"]


def source_stats_file(model_folder: Path, fold: int | str) -> Path:
    """Where a fold's source statistics live (``nnzoo source-stats``, :mod:`nnzoo.pipeline.source_stats`)."""
    from nnzoo.trainers.adapt import SOURCE_STATS_FILE

    return Path(model_folder) / f"fold_{fold}" / SOURCE_STATS_FILE


def check_adapt_options(o) -> None:
    """The checks of ``--adapt``, ``--adapt-hparam`` and ``--adapt-continual`` that need no model.

    Raises:
        NnzooError: one line naming the flag and value.
    """
    from nnzoo.trainers.adapt import parse_adapt_hparams

    if o.adapt is None:
        if o.adapt_hparams or o.adapt_continual:
            raise NnzooError(f"{'--adapt-hparam' if o.adapt_hparams else '--adapt-continual'} needs --adapt "
                             "{tent,vptta,grata}")
        return
    try:
        parse_adapt_hparams(o.adapt, o.adapt_hparams)
    except KeyError as e:
        raise NnzooError(str(e.args[0])) from None
    except ValueError as e:
        raise NnzooError(f"--adapt-hparam {e}" if not str(e).startswith("--") else str(e)) from None
    if o.exact:
        raise NnzooError(f"--adapt {o.adapt} runs in nnzoo's predictor; --exact is nnU-Net's predictor unchanged: "
                         "drop one of them")
    if o.backend != "torch":
        raise NnzooError(f"--adapt {o.adapt} adapts the PyTorch network; --backend {o.backend} runs fixed ONNX "
                         "networks: use --backend torch")


def load_adaptation(o, model, network=None):
    """The :class:`~nnzoo.pipeline.inference.Adaptation` of a run with a model (None without ``--adapt``).

    Args:
        o: the run's options.
        model: the model (:class:`~nnzoo.pipeline.trained_model.ModelRef`).
        network: the model's network, to check that the source statistics were recorded for it.

    Raises:
        NnzooError: the method needs source statistics a fold lacks, or has them for another network (naming
            ``nnzoo source-stats``).
    """
    if o.adapt is None:
        return None
    from nnzoo.trainers.adapt import adapter_class, load_source_statistics, norm_layers, parse_adapt_hparams

    from .inference import Adaptation

    cls = adapter_class(o.adapt)
    stats = []
    if cls.needs_source_stats:
        where = f"-m {model.folder}" if o.model_dir is not None or o.dataset is None else (
            f"-d {o.dataset} -c {model.configuration} -tr {o.trainer}" + (f" -p {o.plans}" if o.plans else ""))
        for f in model.folds:
            path = source_stats_file(model.folder, f)
            if not path.is_file():
                raise NnzooError(f"--adapt {o.adapt} needs the source statistics of the model, and {path} is "
                                 f"missing: record them with `nnzoo source-stats {where} -f {f}`")
            try:
                stats.append(load_source_statistics(path))
            except ValueError as e:
                raise NnzooError(f"--adapt {o.adapt}: {e}: record them again with `nnzoo source-stats {where} "
                                 f"-f {f}`") from None
            layers = stats[-1]["layers"]
            lacking = [] if network is None else [n for n, m in norm_layers(network) if len(layers.get(n, {}).get(
                "mean", ())) != getattr(m, "num_features", getattr(m, "num_channels", -1))]
            if lacking:
                raise NnzooError(f"--adapt {o.adapt}: {path} does not fit this model's network (layer {lacking[0]}): "
                                 f"record them again with `nnzoo source-stats {where} -f {f}`")
    else:
        stats = [None] * len(model.folds)
    return Adaptation(method=cls.name, hparams=parse_adapt_hparams(o.adapt, o.adapt_hparams),
                      continual=o.adapt_continual, source_stats=tuple(stats))


def adaptation_settings(o) -> dict | None:
    """What identifies a run's adaptation (method, every hyperparameter, mode), or None without ``--adapt``."""
    if o.adapt is None:
        return None
    from nnzoo.trainers.adapt import adapter_class, parse_adapt_hparams

    cls = adapter_class(o.adapt)
    hp = {k: list(v) if isinstance(v, tuple) else v for k, v in
          {**_defaults(cls), **parse_adapt_hparams(o.adapt, o.adapt_hparams)}.items()}
    return {"method": cls.name, "hyperparameters": hp, "mode": "continual" if o.adapt_continual else "episodic"}


def _defaults(cls) -> dict:
    from nnzoo.trainers.base import method_hyperparameters

    return method_hyperparameters(cls)


def record_file(output_dir: Path, o) -> Path:
    return Path(output_dir) / ("adaptation.json" if o.num_parts == 1 else f"adaptation_part{o.part_id}.json")


def check_previous_record(output_dir: Path, o, kept: int) -> None:
    """With ``--continue``: the ``kept`` predictions were made with the same adaptation (or none, as now).

    Raises:
        NnzooError: ``adaptation.json`` says otherwise, or adapted predictions would complete unadapted ones.
    """
    f = record_file(output_dir, o)
    previous = json.loads(f.read_text()) if f.is_file() else None
    now = adaptation_settings(o)
    old = None if previous is None else {k: previous.get(k) for k in ("method", "hyperparameters", "mode")}
    if previous is None and now is not None and kept:
        raise NnzooError(f"--continue: the {kept} kept prediction(s) in {output_dir} were made without --adapt "
                         f"(no {f.name}); predict into another folder, or --overwrite")
    if previous is not None and old != now:
        what = "no adaptation" if now is None else f"--adapt {now['method']} ({now['mode']})"
        raise NnzooError(f"--continue: the predictions in {output_dir} were made with --adapt {old['method']} "
                         f"({old['mode']}, {f.name}), this run asks for {what} or other hyperparameters; use the "
                         "same flags, another folder, or --overwrite")


def write_record(output_dir: Path, o, seconds: list[tuple[str | None, float, float | None]], *, device: str,
                 folds: list) -> Path | None:
    """Write (or, with ``--continue``, extend) ``adaptation.json``: per case the seconds spent adapting and how far
    the adaptation moved what the method adapts (``relative_change``, see ``TestTimeAdapter.relative_change``).

    Args:
        seconds: ``(case, seconds, relative change or None)`` per predicted case.
    """
    now = adaptation_settings(o)
    f = record_file(output_dir, o)
    if now is None:
        if o.overwrite:  # the replaced predictions' record goes with them
            f.unlink(missing_ok=True)
        return None
    per_case, changes = {}, {}
    if f.is_file() and o.continue_prediction:
        old = json.loads(f.read_text())
        per_case = dict(old.get("seconds_per_case", {}))
        changes = dict(old.get("relative_change_per_case", {}))
    for i, (c, s, ch) in enumerate(seconds):
        name = c or f"case_{i}"
        per_case[name] = round(s, 4)
        if ch is not None:
            changes[name] = float(f"{ch:.4g}")
    record = {**now, "folds": [str(x) for x in folds], "device": device,
              "seconds_per_case": dict(sorted(per_case.items())),
              "mean_seconds_per_case": round(sum(per_case.values()) / len(per_case), 4) if per_case else None,
              "relative_change_per_case": dict(sorted(changes.items())),
              "mean_relative_change": float(f"{sum(changes.values()) / len(changes):.4g}") if changes else None,
              "note": "seconds spent adapting (all folds), not counting the prediction itself; relative change: how "
                      "far adaptation moved what the method adapts at the end of the case, mean over folds (TENT, "
                      "GraTa: ||θ - θ_trained|| / ||θ_trained|| of the norm layers' affine parameters, accumulated "
                      "since the trained state when continual; VPTTA: root mean square of prompt - 1)"}
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(f)
    return f
