"""DG-TTA's MIND pretraining as an nnU-Net trainer: the network segments a modality-independent descriptor."""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from .base import NnzooTrainer
from .networks.mind import attach_mind, mind_channels
from .registry import register_trainer

__all__ = ["nnUNetTrainerMIND"]


@register_trainer(
    description="MIND (DG-TTA): the network segments the MIND-SSC self-similarity descriptor of the image, "
    "which a contrast change does not move",
    paper="Weihsbach, Kruse, Bigalke, Heinrich, DG-TTA: Out-of-domain Medical Image Segmentation through "
    "Augmentation and Descriptor-driven Domain Generalization and Test-Time Adaptation, Sensors 24(1), 2024",
    official_code="https://github.com/multimodallearning/DG-TTA",
    dims=("2d", "3d"),
    domain_generalisation=True,
)
class nnUNetTrainerMIND(NnzooTrainer):
    """DG-TTA's MIND pretraining: nnU-Net's network on the MIND-SSC descriptor of every image.

    Weihsbach, Kruse, Bigalke, Heinrich, "DG-TTA: Out-of-domain medical image segmentation through
    augmentation and descriptor-driven domain generalization and test-time adaptation", Sensors 24(1), 2024
    (official code: github multimodallearning/DG-TTA, ``dg_tta/pretraining/nnUNetTrainer_MIND.py``,
    ``dg_tta/mind.py``); the descriptor: Heinrich et al., MedIA 2012 / MICCAI 2013 (MIND, MIND-SSC).
    The plan's network (``PlainConvUNet`` or ``ResidualEncoderUNet``, nnU-Net's loss, optimiser and
    augmentation) takes :func:`~nnzoo.trainers.networks.mind.mind_channels` channels per image channel;
    a forward pre-hook (:func:`~nnzoo.trainers.networks.mind.attach_mind`, as official) turns the image
    into its MIND-SSC descriptor in training, validation and prediction alike. DG-TTA's combined
    pretraining ``nnUNetTrainer_GIN_MIND`` is this trainer with ``nnzoo train --augment gin`` (GIN on the
    image, then the descriptor of the GIN view, the official order of the two hooks).

    Carried over (official): 12 neighbour pairs of the 6-neighbourhood in 3D, ``delta`` 1, Gaussian
    ``sigma`` 1 on the squared differences (5 taps), noise of std 0.05 on the differences, distances minus
    their minimum divided by their mean, clamped to [0.001, 1000] times its mean, ``exp(-d / v)``; mirroring
    off in training and prediction (``nnUNetTrainer_MIND`` sets ``mirror_axes = None``).

    Deviations from the official code:
        - 2D: the official descriptor is 3D only. Here one code path: in 2D the 4 pairs of the
          4-neighbourhood (the same rule: face neighbours at squared distance 2), so a 2D network takes 4
          channels per image channel.
        - Channels: the official code takes one channel; here every input channel gets its own
          descriptor (``C`` channels -> ``K C``).
        - The noise is added in training only. Official: also at inference, which would make
          ``nnzoo predict`` depend on the random state (its outputs are reproducible and episodic).
        - The clamp of the local variance uses each sample's mean (official: the batch's), so a case's
          descriptor does not depend on the other patches of a batch; a floor of 1e-12 keeps a constant
          tile (official: 0 / 0) finite: its descriptor is 1 everywhere.
        - Optimiser, schedule and epochs are nnU-Net's (official: 1000 epochs, nnU-Net's defaults).

    Measured (CPU, 2026-12; ``tests/trainers/test_mind.py`` and the brain phantoms of
    :mod:`nnzoo.pipeline.brain_phantoms`, 64 x 64 slices, 10 subjects, each z-scored): the descriptor does
    not change under ``a x + b`` for negative ``a`` (test); against the same subject's ``t1_3t`` slice, the
    raw intensities of its T2 slice correlate 0.58 and its descriptor 0.84 (FLAIR 0.89 / 0.81, ``t1_15t``
    0.96 / 0.91): the contrast change that separates T2 from T1 is mostly gone from the input. In the
    domain-shift benchmark (README; 2D, 3 seeds, labels of two T1 styles) it closes 109 % of T2's gap and 96 %
    of FLAIR's and loses 8.2 points on the labeled T1 styles (6.3 at twice the iterations, 7.0 with
    mirroring on): it scores alike on every style, without the intensity contrast a T1-only model uses.

    Attributes:
        MIND_DELTA: neighbour distance in voxels (official 1).
        MIND_SIGMA: Gaussian of the patch distance, voxels (official 1).
        MIND_NOISE: std of the noise on the neighbour differences while training (official 0.05).
        MIRRORING: nnU-Net's mirroring in training and prediction (official off).
    """

    MIND_DELTA = 1
    MIND_SIGMA = 1.0
    MIND_NOISE = 0.05
    MIRRORING = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plan's network for ``K`` times the input channels, fed the MIND-SSC descriptor by a pre-hook.

        Also called by nnU-Net's predictor (the hook is not part of the state dict).
        """
        k = mind_channels(len(configuration_manager.patch_size))
        network = NnzooTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels * k,
                                                          num_output_channels, enable_deep_supervision)
        attach_mind(network, delta=int(cls.MIND_DELTA), sigma=float(cls.MIND_SIGMA), noise=float(cls.MIND_NOISE))
        return network

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's, with mirroring off in training and prediction unless ``MIRRORING`` (official: off)."""
        rotation, dummy_2d, patch, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.MIRRORING:
            return rotation, dummy_2d, patch, mirror_axes
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch, None
