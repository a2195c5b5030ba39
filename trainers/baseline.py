"""nnU-Net's own default trainer, registered as the baseline every method is compared with."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from .registry import register_trainer

register_trainer(
    nnUNetTrainer,
    description="nnU-Net's default trainer (plain U-Net, Dice+CE, deep supervision): the baseline",
    paper="Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical "
    "image segmentation, Nature Methods 18, 2021",
    dims=("2d", "3d"),
    official_code="https://github.com/MIC-DKFZ/nnUNet",
)
