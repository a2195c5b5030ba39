"""nnU-Net's own trainers in the zoo: the default (the baseline every method is compared with) and DA5 (its
heavier augmentation, the baseline of the domain-generalisation methods), imported from nnunetv2, not copied."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

from .registry import register_trainer

register_trainer(
    nnUNetTrainer,
    description="nnU-Net's default trainer (plain U-Net, Dice+CE, deep supervision): the baseline",
    paper="Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical "
    "image segmentation, Nature Methods 18, 2021",
    dims=("2d", "3d"),
    official_code="https://github.com/MIC-DKFZ/nnUNet",
)

register_trainer(
    nnUNetTrainerDA5,
    description="nnU-Net's heavier augmentation variant (DA5): the augmentation baseline against domain shift",
    paper="Isensee et al., nnU-Net (nnUNetTrainerDA5, MIC-DKFZ/nnUNet variants/data_augmentation)",
    dims=("2d", "3d"),
    official_code="https://github.com/MIC-DKFZ/nnUNet",
    domain_generalisation=True,
)
