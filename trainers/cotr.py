"""CoTr as an nnU-Net trainer: nnUNetTrainerCoTr."""

from __future__ import annotations

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from .base import NnzooTrainer
from .networks.cotr import CoTr, cotr_strides, deep_supervision_scales, total_stride
from .registry import register_trainer

__all__ = ["COTR_CLASS_NAME", "nnUNetTrainerCoTr", "strides_for_configuration"]

COTR_CLASS_NAME = f"{CoTr.__module__}.{CoTr.__name__}"


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
    dims=("2d", "3d"),
    semi_supervised=False,
    planner="nnUNetPlannerCoTr",
)
class nnUNetTrainerCoTr(NnzooTrainer):
    """CoTr (Xie et al., MICCAI 2021) trained with nnU-Net's pipeline.

    The network is :class:`nnzoo.trainers.networks.cotr.CoTr` with the paper's widths (class
    attributes below); its strides come from the plan (:func:`strides_for_configuration`): on an
    isotropic 3D plan the paper's stem (1, 2, 2) and stages (2, 2, 2), total stride (8, 16, 16); in
    2D stride 2 everywhere, total 16. The patch must be divisible by the total stride: use the
    CoTr planner (``nnUNetPlannerCoTr``), which also budgets the Transformer's memory.

    Deep supervision follows the network (outputs at full resolution, then at the stem level and
    below, highest resolution first) with loss weights 1, 1/2, 1/4, 1/8 normalised to sum to 1,
    instead of nnU-Net's scales from the plan's pooling. Optimiser, schedule, loss, augmentation
    and gradient clipping (12) are nnU-Net's, as in the official trainer (SGD 1e-2, momentum 0.99,
    Nesterov, poly, 1000 epochs).

    Deviations from the official code: see :class:`~nnzoo.trainers.networks.cotr.CoTr`; in addition
    the official trainer derives DS weights from the plan's pooling depth, here they are fixed to the
    network's four outputs.
    """

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
    DS_WEIGHTS = (1.0, 0.5, 0.25, 0.125)

    @classmethod
    def network_kwargs(cls) -> dict:
        """Architecture keywords of :class:`CoTr` taken from the class attributes."""
        return {
            "stem_channels": cls.STEM_CHANNELS, "stage_channels": tuple(cls.STAGE_CHANNELS),
            "blocks_per_stage": tuple(cls.BLOCKS_PER_STAGE), "stem_kernel_size": cls.STEM_KERNEL_SIZE,
            "d_model": cls.D_MODEL, "n_heads": cls.N_HEADS, "n_points": cls.N_POINTS, "n_layers": cls.N_LAYERS,
            "ffn_dim": cls.FFN_DIM, "dropout": cls.DROPOUT,
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
        strides = strides_for_configuration(configuration_manager, 1 + len(cls.STAGE_CHANNELS))
        divisor = total_stride(strides)
        if any(p % d for p, d in zip(patch, divisor)):
            raise ValueError(
                f"{cls.__name__}: patch size {patch} is not divisible by the network's total stride {list(divisor)} "
                f"(strides {strides}); plan the dataset with the CoTr planner (nnUNetPlannerCoTr)."
            )
        conv_op = torch.nn.Conv3d if len(patch) == 3 else torch.nn.Conv2d
        return CoTr(num_input_channels, num_output_channels, conv_op, strides,
                    deep_supervision=enable_deep_supervision, **cls.network_kwargs())

    def _get_deep_supervision_scales(self):
        """Scales of the network's outputs relative to the patch (highest resolution first), or None."""
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(strides_for_configuration(self.configuration_manager,
                                                                 1 + len(self.STAGE_CHANNELS)))

    def _build_loss(self):
        """nnU-Net's loss with CoTr's deep-supervision weights (1, 1/2, 1/4, ... normalised)."""
        loss = super()._build_loss()
        if isinstance(loss, DeepSupervisionWrapper):
            n = len(loss.weight_factors)
            w = [float(self.DS_WEIGHTS[i]) if i < len(self.DS_WEIGHTS) else 0.5 ** i for i in range(n)]
            loss.weight_factors = tuple(x / sum(w) for x in w)
        return loss
