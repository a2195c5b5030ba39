"""Shared pieces for nnzoo's method planners.

A method planner is nnU-Net's planner (``ExperimentPlanner`` or a ResEnc planner) plus:

- :class:`MethodPlannerMixin`: its plans name as a class attribute (``PLANS_NAME``) and one
  constructor with nnU-Net's signature;
- :class:`SharedPreprocessingMixin`: ``2d`` and ``3d_fullres`` reuse the base plans' preprocessed data;
- :class:`NetworkEstimateMixin`: the method network's memory, either only reported (default: the
  patch and batch of nnU-Net's own planner, i.e. what the official code trains on) or used for
  nnU-Net's patch/batch search (``FIT_MEMORY = True``: the ``...Fit`` planners for small GPUs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MethodPlannerMixin", "SharedPreprocessingMixin", "NetworkEstimateMixin", "estimate_network_feature_maps",
           "MEMORY_KEY", "memory_note"]

#: plans key holding the method's memory needs per configuration (written by NetworkEstimateMixin)
MEMORY_KEY = "nnzoo_memory"


def estimate_network_feature_maps(network_class: type, patch_size: Sequence[int], *, input_channels: int,
                                  output_channels: int, arch_class_name: str, arch_kwargs: dict,
                                  arch_kwargs_req_import: Sequence[str], **network_kwargs) -> np.int64:
    """nnU-Net's VRAM proxy (stored feature-map elements per sample) for a method network.

    The network is built by :func:`~nnzoo.trainers.networks.common.network_from_arch` on the
    ``meta`` device (no memory, no initialisation) with deep supervision off, as nnU-Net does for
    its own estimate, and asked for ``compute_conv_feature_map_size(patch_size)``.

    Args:
        network_class: an :class:`~nnzoo.trainers.networks.common.EncoderDecoderNet` subclass.
        patch_size: spatial patch size.
        input_channels: image channels.
        output_channels: segmentation heads.
        arch_class_name: plan ``network_class_name`` (PlainConvUNet or ResidualEncoderUNet).
        arch_kwargs: plan ``arch_kwargs``.
        arch_kwargs_req_import: keys of ``arch_kwargs`` given as import paths.
        network_kwargs: further arguments of ``network_class``.

    Returns:
        The estimate, comparable with ``ExperimentPlanner.static_estimate_VRAM_usage``.
    """
    from nnzoo.trainers.networks.common import network_from_arch

    with torch.device("meta"):
        net = network_from_arch(network_class, arch_class_name, arch_kwargs=arch_kwargs,
                                kw_requires_import=arch_kwargs_req_import, input_channels=input_channels,
                                num_classes=output_channels, deep_supervision=False, allow_init=False,
                                **network_kwargs)
    return np.int64(net.compute_conv_feature_map_size(list(patch_size)))


def memory_note(plans: dict, configuration: str, patches_per_sample: float | None = None) -> dict | None:
    """The method planner's memory note of a configuration (``plans[MEMORY_KEY]``), for the batch actually trained.

    The planner estimated the memory for its trainer's default number of patches per planned batch
    element (``patches_per_sample`` in the note, e.g. 2 for one unlabeled patch per labeled one). A run
    with another number (``--hparam UNLABELED_BATCH_RATIO=2``: 3 patches) needs proportionally more
    memory for the method's share: the note is rescaled to it.

    Args:
        plans: the plans (a dict as in ``plans.json``).
        configuration: the configuration's name.
        patches_per_sample: patches per planned batch element of the run (None: as planned), e.g.
            ``1 + trainer_class.UNLABELED_BATCH_RATIO`` for a semi-supervised trainer.

    Returns:
        ``{"patch_size", "batch_size", "method_vs_unet", "gpu_memory_target_gb", ...}`` or None when the
        plans hold no note for the configuration.
    """
    note = plans.get(MEMORY_KEY, {}).get(configuration)
    if not note:
        return None
    planned = note.get("patches_per_sample")
    if patches_per_sample is None or planned is None or patches_per_sample == planned:
        return dict(note)
    f = patches_per_sample / planned
    return {**note, "patches_per_sample": patches_per_sample, "method_vs_unet": round(note["method_vs_unet"] * f, 3),
            "gpu_memory_target_gb": round(note["gpu_memory_target_gb"] * f, 1)}


class MethodPlannerMixin:
    """nnU-Net planner constructor with the plans name taken from ``PLANS_NAME``.

    The signature is nnU-Net's (nnU-Net's planning code passes these keywords); ``plans_name``
    defaults to the class's ``PLANS_NAME`` and ``gpu_memory_target_in_gb`` to the base planner's
    own default (8 GB, 24 GB for ResEnc-L).

    Attributes:
        PLANS_NAME: the plans this planner writes (``nnzoo train -tr <method>`` looks for them).
    """

    PLANS_NAME: str = "nnUNetPlans"

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        memory = {} if gpu_memory_target_in_gb is None else {"gpu_memory_target_in_gb": gpu_memory_target_in_gb}
        super().__init__(dataset_name_or_id, preprocessor_name=preprocessor_name,  # type: ignore[call-arg]
                         plans_name=plans_name or self.PLANS_NAME, overwrite_target_spacing=overwrite_target_spacing,
                         suppress_transpose=suppress_transpose, **memory)


class SharedPreprocessingMixin:
    """Point a method planner's configurations at the base plans' preprocessed data.

    A method planner that changes only network, patch and batch size (not spacing,
    normalisation or resampling) produces the same preprocessed arrays as the planner it
    derives from for ``2d`` and ``3d_fullres``. With this mixin those configurations use the
    base plans' data identifier (``nnUNetPlans_3d_fullres``...), so the dataset is stored once;
    ``nnzoo plan_and_preprocess`` skips preprocessing a configuration whose data folder is
    complete and identical. ``3d_lowres`` keeps its own folder: its spacing derives from the
    method's fullres patch, as in nnU-Net's ResEnc planners.

    Attributes:
        BASE_PLANS_NAME: plans name of the planner whose preprocessing is shared.
    """

    BASE_PLANS_NAME = "nnUNetPlans"
    SHARED_CONFIGURATIONS = ("2d", "3d_fullres")

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in self.SHARED_CONFIGURATIONS:
            return f"{self.BASE_PLANS_NAME}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"


class NetworkEstimateMixin:
    """A method network's memory in an nnU-Net planner: reported with the official patch, or fitted.

    Subclasses implement :meth:`network_class` (imported lazily) or override :meth:`method_estimate`.

    - ``FIT_MEMORY = False`` (default): nnU-Net's own search, hence nnU-Net's patch and batch, the
      ones the official code of the methods trains on (they are nnU-Net-based or use nnU-Net's
      patch). The plans record, per configuration, how much more memory the method needs there
      than the plain U-Net (``nnzoo_memory``: ``method_vs_unet`` and ``gpu_memory_target_gb`` =
      the target scaled by that factor, which is what the official runs required of their GPU).
    - ``FIT_MEMORY = True``: nnU-Net's search runs against the method's estimate, so patch and
      batch shrink until the method fits ``gpu_memory_target_in_gb`` (for small GPUs).

    Attributes:
        PATCHES_PER_SAMPLE: patches that share the memory of one planned batch element; a
            semi-supervised method's planner derives it from its trainer instead (overriding
            :meth:`patches_per_sample`: 1 + the trainer's ``UNLABELED_BATCH_RATIO``).
    """

    FIT_MEMORY = False
    PATCHES_PER_SAMPLE = 1

    @classmethod
    def patches_per_sample(cls) -> float:
        """Patches that share the memory of one planned batch element (default ``PATCHES_PER_SAMPLE``)."""
        return cls.PATCHES_PER_SAMPLE

    @classmethod
    def network_class(cls) -> type:
        raise NotImplementedError

    def method_architecture(self, configuration: dict) -> dict | None:
        """The ``architecture`` entry to write for a planned configuration (None: keep nnU-Net's U-Net)."""
        return None

    def method_estimate(self, patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                        arch_kwargs: dict, arch_kwargs_req_import) -> np.int64:
        """The method's VRAM proxy for one planned batch element (nnU-Net's units)."""
        return self.patches_per_sample() * estimate_network_feature_maps(
            self.network_class(), patch_size, input_channels=input_channels, output_channels=output_channels,
            arch_class_name=arch_class_name, arch_kwargs=arch_kwargs, arch_kwargs_req_import=arch_kwargs_req_import)

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        if self.FIT_MEMORY:
            return self.method_estimate(patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                        arch_kwargs_req_import)
        return super().static_estimate_VRAM_usage(patch_size, input_channels, output_channels,  # type: ignore[misc]
                                                  arch_class_name, arch_kwargs, arch_kwargs_req_import)

    def save_plans(self, plans: dict) -> None:
        n_in = len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))
        n_out = len(self.dataset_json["labels"])
        notes = {}
        for name, cfg in plans["configurations"].items():
            arch = cfg.get("architecture")
            if not arch or "patch_size" not in cfg:
                continue
            args = (cfg["patch_size"], n_in, n_out, arch["network_class_name"], arch["arch_kwargs"],
                    arch["_kw_requires_import"])
            unet = super().static_estimate_VRAM_usage(*args)  # type: ignore[misc]
            ratio = float(self.method_estimate(*args)) / float(unet)
            notes[name] = {"patch_size": list(cfg["patch_size"]), "batch_size": cfg["batch_size"],
                           "patches_per_sample": self.patches_per_sample(), "method_vs_unet": round(ratio, 3),
                           "gpu_memory_target_gb": round(self.UNet_vram_target_GB * (1 if self.FIT_MEMORY else ratio), 1)}
            fitted = "fitted to" if self.FIT_MEMORY else "nnU-Net's patch; needs about"
            print(f"  {name}: {type(self).__name__}: {fitted} {notes[name]['gpu_memory_target_gb']} GB "
                  f"({ratio:.2f}x the plain U-Net's memory at this patch)")
            cfg["architecture"] = self.method_architecture(cfg) or arch
        plans[MEMORY_KEY] = notes
        super().save_plans(plans)  # type: ignore[misc]
