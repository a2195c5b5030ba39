"""CoTr as an nnU-Net trainer: nnUNetTrainerCoTr."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from .base import NnzooTrainer
from .networks.cotr import (
    COTR_CLASS_NAME,
    CoTr,
    cotr_strides,
    deep_supervision_scales,
    total_stride,
)
from .registry import register_trainer

__all__ = ["nnUNetTrainerCoTr", "strides_for_configuration", "normalized_ds_weights"]


def strides_for_configuration(configuration_manager: ConfigurationManager, n_down: int = 4) -> list[tuple[int, ...]]:
    """CoTr strides for a configuration.

    Plans written by the CoTr planner describe the CoTr network itself: their strides are used as
    they are. Any other plan (nnU-Net's U-Net plans) gives its pooling to ``cotr_strides``.

    Raises:
        ValueError: a CoTr plan holds a number of strides other than ``n_down``.
    """
    ndim = len(configuration_manager.patch_size)
    plan_strides = configuration_manager.pool_op_kernel_sizes
    if configuration_manager.network_arch_class_name == COTR_CLASS_NAME:
        if len(plan_strides) != n_down:
            raise ValueError(f"the plan's CoTr architecture has {len(plan_strides)} strides, the trainer needs {n_down}")
        return [tuple(int(v) for v in s) for s in plan_strides]
    return cotr_strides(plan_strides, ndim, n_down)


def normalized_ds_weights(n_outputs: int, weights: Sequence[float]) -> tuple[float, ...]:
    """Deep-supervision loss weights of ``n_outputs`` outputs, normalised to sum to 1: ``weights[i]``, and
    ``0.5 ** i`` for outputs beyond them."""
    w = [float(weights[i]) if i < len(weights) else 0.5 ** i for i in range(n_outputs)]
    return tuple(x / sum(w) for x in w)


@register_trainer(
    description="CoTr: residual CNN encoder + deformable Transformer (pure PyTorch) + residual decoder",
    paper="Xie, Zhang, Shen, Xia, CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image "
    "Segmentation, MICCAI 2021",
    official_code="https://github.com/YtongXie/CoTr",
    dims=("2d", "3d"),
    planner="nnUNetPlannerCoTr",
    benchmark="bench_cotr",
)
class nnUNetTrainerCoTr(NnzooTrainer):
    """CoTr (Xie et al., MICCAI 2021) trained with nnU-Net's pipeline.

    The network is :class:`nnzoo.trainers.networks.cotr.CoTr`. On plans written by the CoTr
    planner (``nnUNetPlannerCoTr``, the default; ``nnUNetPlannerCoTrFit`` for small GPUs) the plan's
    ``architecture`` entry describes the CoTr network (strides, widths, DeTrans settings) and the
    network is built from it by nnU-Net's ``get_network_from_plans``, exactly as the predictor
    does. On any other plan (nnU-Net's U-Net plans) the class attributes below give the widths and
    the strides come from the plan's pooling (:func:`strides_for_configuration`): on an isotropic 3D
    plan the paper's stem (1, 2, 2) and stages (2, 2, 2), total stride (8, 16, 16); in 2D stride 2
    everywhere, total 16. The patch must be divisible by the total stride (nnU-Net's patches are).

    Deep supervision follows the network (outputs at full resolution, then at the stem level and
    below, highest resolution first) with loss weights 1, 1/2, 1/4, 1/8 normalised to sum to 1,
    instead of nnU-Net's scales from the plan's pooling. Optimiser, schedule, loss, augmentation
    and gradient clipping (12) are nnU-Net's, as in the official trainer (SGD 1e-2, momentum 0.99,
    Nesterov, poly, 1000 epochs).

    Deviations from the official code: see :class:`~nnzoo.trainers.networks.cotr.CoTr`; in addition
        - the official trainer derives DS weights from the plan's pooling depth, here they are
          fixed to the network's four outputs;
        - patch and batch: nnU-Net v2's default planner's (the official runs used nnU-Net v1's
          plans, e.g. 48x192x192 on BCV); ``nnUNetPlannerCoTrFit`` shrinks them to fit a GPU memory
          target instead.
    """

    # the paper's architecture (official ``ResTranUnet``), declared here only: the network has no defaults
    # and the CoTr planners read network_kwargs()
    STEM_CHANNELS = 64
    STAGE_CHANNELS = (192, 384, 384)
    BLOCKS_PER_STAGE = (3, 3, 2)
    STEM_KERNEL_SIZE = 7
    D_MODEL = 384
    N_HEADS = 6
    N_POINTS = 4
    N_LAYERS = 6
    FFN_DIM = 1536
    DROPOUT = 0.1
    AXIS_ORDER = "grid"
    DS_WEIGHTS = (1.0, 0.5, 0.25, 0.125)

    @classmethod
    def network_kwargs(cls) -> dict:
        """Architecture keywords of :class:`CoTr` (:data:`~nnzoo.trainers.networks.cotr.ARCH_KEYS`) from the
        class attributes: used on U-Net plans and written into plans by the CoTr planners."""
        return {
            "stem_channels": cls.STEM_CHANNELS, "stage_channels": tuple(cls.STAGE_CHANNELS),
            "blocks_per_stage": tuple(cls.BLOCKS_PER_STAGE), "stem_kernel_size": cls.STEM_KERNEL_SIZE,
            "d_model": cls.D_MODEL, "n_heads": cls.N_HEADS, "n_points": cls.N_POINTS, "n_layers": cls.N_LAYERS,
            "ffn_dim": cls.FFN_DIM, "dropout": cls.DROPOUT, "axis_order": cls.AXIS_ORDER,
        }

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CoTr:
        """Build CoTr for a configuration (also used by nnU-Net's predictor).

        Raises:
            ValueError: the configuration's patch size is not divisible by the network's total stride.
        """
        patch = [int(p) for p in configuration_manager.patch_size]
        cotr_plan = configuration_manager.network_arch_class_name == COTR_CLASS_NAME
        n_down = 1 + len(configuration_manager.network_arch_init_kwargs["stage_channels"] if cotr_plan
                         else cls.STAGE_CHANNELS)
        strides = strides_for_configuration(configuration_manager, n_down)
        divisor = total_stride(strides)
        if any(p % d for p, d in zip(patch, divisor)):
            raise ValueError(
                f"{cls.__name__}: patch size {patch} is not divisible by the network's total stride {list(divisor)} "
                f"(strides {strides}); plan the dataset with the CoTr planner (nnUNetPlannerCoTr)."
            )
        if cotr_plan:
            return get_network_from_plans(COTR_CLASS_NAME, configuration_manager.network_arch_init_kwargs,
                                          configuration_manager.network_arch_init_kwargs_req_import,
                                          num_input_channels, num_output_channels, allow_init=True,
                                          deep_supervision=enable_deep_supervision)
        conv_op = torch.nn.Conv3d if len(patch) == 3 else torch.nn.Conv2d
        return CoTr(num_input_channels, num_output_channels, conv_op=conv_op, strides=strides,
                    deep_supervision=enable_deep_supervision, **cls.network_kwargs())

    def _get_deep_supervision_scales(self):
        """Scales of the network's outputs relative to the patch (highest resolution first), or None."""
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(self.network_strides())

    def network_strides(self) -> list[tuple[int, ...]]:
        """The strides of this configuration's CoTr network (stem first)."""
        cm = self.configuration_manager
        stages = (cm.network_arch_init_kwargs["stage_channels"] if cm.network_arch_class_name == COTR_CLASS_NAME
                  else self.STAGE_CHANNELS)
        return strides_for_configuration(cm, 1 + len(stages))

    def _build_loss(self):
        """nnU-Net's loss with CoTr's deep-supervision weights (1, 1/2, 1/4, ... normalised)."""
        loss = super()._build_loss()
        if isinstance(loss, DeepSupervisionWrapper):
            loss.weight_factors = normalized_ds_weights(len(loss.weight_factors), self.DS_WEIGHTS)
        return loss
