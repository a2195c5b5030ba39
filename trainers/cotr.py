"""CoTr as an nnU-Net trainer: nnUNetTrainerCoTr."""

from __future__ import annotations

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from .base import NnzooTrainer
from .networks.cotr import (
    COTR_ARCH,
    COTR_CLASS_NAME,
    CoTr,
    cotr_strides,
    deep_supervision_scales,
    total_stride,
)
from .registry import register_trainer

__all__ = ["nnUNetTrainerCoTr", "strides_for_configuration"]


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

    STEM_CHANNELS = COTR_ARCH["stem_channels"]
    STAGE_CHANNELS = COTR_ARCH["stage_channels"]
    BLOCKS_PER_STAGE = COTR_ARCH["blocks_per_stage"]
    STEM_KERNEL_SIZE = COTR_ARCH["stem_kernel_size"]
    D_MODEL = COTR_ARCH["d_model"]
    N_HEADS = COTR_ARCH["n_heads"]
    N_POINTS = COTR_ARCH["n_points"]
    N_LAYERS = COTR_ARCH["n_layers"]
    FFN_DIM = COTR_ARCH["ffn_dim"]
    DROPOUT = COTR_ARCH["dropout"]
    AXIS_ORDER = COTR_ARCH["axis_order"]
    DS_WEIGHTS = (1.0, 0.5, 0.25, 0.125)

    @classmethod
    def network_kwargs(cls) -> dict:
        """Architecture keywords of :class:`CoTr` taken from the class attributes (U-Net plans)."""
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
        return CoTr(num_input_channels, num_output_channels, conv_op, strides,
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
            n = len(loss.weight_factors)
            w = [float(self.DS_WEIGHTS[i]) if i < len(self.DS_WEIGHTS) else 0.5 ** i for i in range(n)]
            loss.weight_factors = tuple(x / sum(w) for x in w)
        return loss
