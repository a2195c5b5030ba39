"""Planner for CoTr: patch and batch size budgeted for its CNN and its deformable Transformer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

from .base import SharedPreprocessingMixin
from .registry import register_planner

__all__ = ["plan_cotr_patch", "nnUNetPlannerCoTr"]


def _cotr_strides_for_patch(spacing, patch, n_down: int, min_edge: int):
    from nnzoo.trainers.networks.cotr import cotr_strides, total_stride

    _, pool, _, _, _ = get_pool_and_conv_props(list(spacing), list(patch), min_edge, 999999)
    strides = cotr_strides(pool, len(spacing), n_down)
    return strides, total_stride(strides)


def plan_cotr_patch(spacing: Sequence[float], median_shape: Sequence[float], num_input_channels: int,
                    num_classes: int, arch: dict, reference: float, ref_bs: int, min_batch_size: int = 2,
                    approximate_n_voxels_dataset: float | None = None, max_dataset_covered: float = 0.05,
                    min_edge: int = 4) -> dict:
    """Largest CoTr patch (divisible by its total stride) that fits the memory reference, and the batch.

    Same search as nnU-Net's planner: start from a patch with the spacing's aspect ratio and the
    volume of 256^3 (2D: 2048^2), clipped to the median shape; derive the network's strides from
    nnU-Net's pooling for that patch (``cotr_strides``) and round the patch up to a multiple of the
    total stride; while ``estimate / ref_bs * 2 > reference`` (room for batch 2), shrink the axis
    that is largest relative to the median shape by one stride multiple, rounding every axis down
    to the (re-derived) total stride. The estimate is
    :func:`~nnzoo.trainers.networks.cotr.estimate_train_memory_elements` (convolutions plus the
    Transformer's tokens x d_model x layers activations and sampling tensors). The batch size is
    the largest whose estimate fits (nnU-Net rounds to the nearest instead), capped so that a
    batch covers at most ``max_dataset_covered`` of the dataset, and at least ``min_batch_size``.

    Args:
        spacing: target spacing of the configuration.
        median_shape: median image shape after resampling.
        num_input_channels: image channels.
        num_classes: output channels.
        arch: CoTr architecture keywords (``nnUNetTrainerCoTr.network_kwargs()``).
        reference: memory reference in estimate units (nnU-Net's, scaled to the GPU target).
        ref_bs: batch size the reference corresponds to.
        min_batch_size: smallest batch size.
        approximate_n_voxels_dataset: voxels in the dataset (caps the batch at
            ``max_dataset_covered`` of it); None: no cap.
        max_dataset_covered: see above.
        min_edge: nnU-Net's minimal bottleneck edge length for its pooling rule.

    Returns:
        dict with ``patch_size`` (tuple), ``strides`` (list of tuples), ``batch_size``, ``estimate``
        (per sample) and ``reference``.
    """
    from nnzoo.trainers.networks.cotr import estimate_train_memory_elements

    ndim = len(spacing)
    n_down = 1 + len(arch.get("stage_channels", (192, 384, 384)))
    tmp = 1 / np.asarray(spacing, dtype=float)
    target = 256 ** 3 if ndim == 3 else 2048 ** 2
    patch = [round(v) for v in tmp * (target / np.prod(tmp)) ** (1 / ndim)]
    patch = [max(1, min(p, round(m))) for p, m in zip(patch, median_shape[:ndim])]
    strides, div = _cotr_strides_for_patch(spacing, patch, n_down, min_edge)
    patch = [int(np.ceil(p / d) * d) for p, d in zip(patch, div)]

    def estimate(p, s):
        return estimate_train_memory_elements(p, s, num_input_channels, num_classes, **arch)

    est = estimate(patch, strides)
    while est / ref_bs * min_batch_size > reference:
        ratios = [p / m for p, m in zip(patch, median_shape[:ndim])]
        candidates = [a for a in np.argsort(ratios)[::-1] if patch[a] > div[a]]
        if not candidates:
            break
        axis = int(candidates[0])
        patch[axis] -= div[axis]
        strides, div = _cotr_strides_for_patch(spacing, patch, n_down, min_edge)
        patch = [max(d, p // d * d) for p, d in zip(patch, div)]
        est = estimate(patch, strides)
    batch = int(np.floor(reference / est * ref_bs))  # nnU-Net rounds; floor keeps the batch within the target
    if approximate_n_voxels_dataset is not None:
        batch = min(batch, round(approximate_n_voxels_dataset * max_dataset_covered / np.prod(patch, dtype=np.float64)))
    batch = max(int(batch), min_batch_size)
    return {"patch_size": tuple(int(p) for p in patch), "strides": strides, "batch_size": batch,
            "estimate": int(est), "reference": float(reference)}


@register_planner
class nnUNetPlannerCoTr(SharedPreprocessingMixin, ExperimentPlanner):
    """nnU-Net's default planner with patch, batch and architecture entry for ``nnUNetTrainerCoTr``.

    Spacing, normalisation and resampling are nnU-Net's (2d and 3d_fullres reuse ``nnUNetPlans``'
    preprocessed data); patch and batch come from :func:`plan_cotr_patch` with nnU-Net's memory
    reference scaled to ``gpu_memory_target_in_gb``, exactly as the default planner scales it.
    The ``architecture`` entry describes the CoTr network (``nnzoo.trainers.networks.cotr.CoTr``,
    its strides and widths); the trainer's ``build_network_architecture`` builds the network.
    Plans are written as ``nnUNetPlans_CoTr``.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans_CoTr",
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        from nnzoo.trainers.cotr import COTR_CLASS_NAME, nnUNetTrainerCoTr

        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        ndim = len(spacing)
        num_input_channels = len(self.dataset_json["channel_names"] if "channel_names" in self.dataset_json
                                 else self.dataset_json["modality"])
        num_classes = len(self.dataset_json["labels"])
        arch = nnUNetTrainerCoTr.network_kwargs()
        reference = (self.UNet_reference_val_2d if ndim == 2 else self.UNet_reference_val_3d) * \
            (self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB)
        ref_bs = self.UNet_reference_val_corresp_bs_2d if ndim == 2 else self.UNet_reference_val_corresp_bs_3d
        res = plan_cotr_patch(spacing, median_shape, num_input_channels, num_classes, arch, reference, ref_bs,
                              self.UNet_min_batch_size, approximate_n_voxels_dataset, self.max_dataset_covered,
                              self.UNet_featuremap_min_edge_length)
        dim = f"{ndim}d"
        plan["patch_size"] = res["patch_size"]
        plan["batch_size"] = res["batch_size"]
        plan["architecture"] = {
            "network_class_name": COTR_CLASS_NAME,
            "arch_kwargs": {
                "conv_op": f"torch.nn.modules.conv.Conv{dim}",
                "strides": [list(s) for s in res["strides"]],
                **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"negative_slope": 1e-2, "inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "nonlin"],
        }
        return plan
