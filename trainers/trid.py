"""TriD as an nnU-Net trainer: nnUNetTrainerTriD (random style injection on encoder stages)."""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from .base import NnzooTrainer
from .networks.trid import attach_random_style
from .registry import register_trainer

__all__ = ["nnUNetTrainerTriD"]


@register_trainer(
    description="TriD: random feature statistics (uniform) injected into encoder stages while training",
    paper="Chen, Pan, Ye, Cui, Xia, Treasure in Distribution: A Domain Randomization based Multi-Source "
    "Domain Generalization for 2D Medical Image Segmentation, MICCAI 2023",
    official_code="https://github.com/Chen-Ziyang/TriD",
    dims=("2d", "3d"),
    domain_generalisation=True,
)
class nnUNetTrainerTriD(NnzooTrainer):
    """TriD (Chen et al., MICCAI 2023) on nnU-Net's plan-built U-Net.

    The network is exactly the plan's (``PlainConvUNet`` or ``ResidualEncoderUNet``, same state dict as
    ``nnUNetTrainer``'s), with a parameter-free
    :class:`~nnzoo.trainers.networks.trid.RandomStyle` hooked onto the output of encoder stages
    ``STAGES`` (:func:`~nnzoo.trainers.networks.trid.attach_random_style`). In training mode each of
    them, with probability ``P`` per forward pass, normalises the stage's output per sample and
    channel with its own (detached) mean and standard deviation and gives each channel, with a
    Bernoulli choice of probability ``lambda ~ Beta(ALPHA, ALPHA)``, either a random mean
    ``~ U(MEAN_RANGE)`` and standard deviation ``~ U(STD_RANGE)`` or its own statistics back. In eval
    mode (validation, nnU-Net's predictor) the network is the plain U-Net. As in the official code
    (``TriD`` in ``networks/mixstyle.py`` of Chen-Ziyang/TriD) no domain labels are used and nothing
    is mixed across the batch: the "mixing" is the per-channel choice between random and own
    statistics, so the trainer needs no ``domains.json``. Loss, optimiser, schedule, augmentation and
    deep supervision are nnU-Net's.

    Official settings kept: ``p = 0.5`` (``--random_prob``), ``Beta(0.1, 0.1)``, ``U(0, 1)`` for both
    statistics (the official ``var_random`` is used as a standard deviation, so is ``STD_RANGE``
    here), ``eps = 1e-6``, unbiased variance over the spatial axes, one ``p`` draw per call and stage,
    statistics detached, the re-styled map feeding both the next stage and the skip connection.

    Depths: the official default is ``--mixstyle_layers layer1 layer2`` of a ResNet-34 U-Net whose
    feature levels are the stem (``layer0``, first skip) and ``layer1`` ... ``layer4``. Level for
    level, ``layer1``/``layer2`` are nnU-Net's second and third encoder stages, ``STAGES = (1, 2)``
    (stage 0 is the full-resolution one). They sit one resolution level higher than in the official
    network (whose stem already halves the image): 1/2 and 1/4 in-plane instead of 1/4 and 1/8.

    What acts under nnU-Net's InstanceNorm (measured 2026-12 on CPU: an untrained He-initialised
    ``PlainConvUNet`` with InstanceNorm and LeakyReLU, 2D: 5 stages of 32-512 features on 4 x 128 x 128
    images, 3D: 4 stages of 32-256 on 4 x 32 x 48 x 48; TriD at stage 1 with the official per-channel
    choice; relative change ``||y' - y|| / ||y||`` of stage 2's output and of the logits, mean of 10 draws):

    ==============================================  ==================  ==================
    TriD at stage 1                                 next stage 2D / 3D  logits 2D / 3D
    ==============================================  ==================  ==================
    official: stage output (after norm + nonlin)    0.41 / 0.40         0.55 / 0.37
    same, random means only (own stds kept)         0.05 / 0.10         0.09 / 0.10
    same, random stds only (own means kept)         0.41 / 0.39         0.55 / 0.36
    after the last norm, before its nonlinearity    0.45 / 0.44         0.59 / 0.40
    before the last norm (on the conv's output)     0.03 / 0.03         0.07 / 0.03
    same, random means only                         0.000 / 0.000       0.000 / 0.000
    BatchNorm network (official norm), stage output 0.50 / -            0.61 / -
    same, random means only                         0.32 / -            0.48 / -
    ==============================================  ==================  ==================

    A per-channel affine change of a conv's input is cancelled by the InstanceNorm after that conv
    only in the parts that reach every output channel alike: the shift (the conv turns per-channel
    constants into per-output-channel constants, which the norm removes; zero-padded borders keep a
    trace) and a scale common to all channels. Per-channel scales survive, because the conv sums the
    channels with changed relative weights. So TriD's random *standard deviations* act (as much as the
    whole perturbation) and its random *means* hardly do; in the official BatchNorm network the batch
    statistics keep a per-sample shift, and the means act too. At the official insertion point TriD
    acts, so it is kept there (the alternative after the norm and before the nonlinearity, where
    the shift survives the LeakyReLU, acts only ~10 % more; before the norm TriD would be cancelled,
    up to the norm's eps for drawn standard deviations near 0). ``test_trid.py`` checks the means/stds
    contrast on the tiny test plans.

    Deviations from the official code:
        - network: nnU-Net's plan U-Net with InstanceNorm (official: ImageNet-pretrained ResNet-34
          encoder with BatchNorm, U-Net decoder); hence the stages above and the means' near-null effect;
        - the ``p`` draw uses torch's generator instead of Python's ``random`` (seeded with
          ``torch.manual_seed``), statistics are computed in float32 under autocast;
        - training: nnU-Net's (SGD 1e-2 poly, Dice+CE with deep supervision, nnU-Net's augmentation,
          1000 x 250 iterations) instead of the official SGD (lr 1e-3 fundus / 1e-2 prostate, momentum
          0.99, weight decay 5e-4, batch 8, 100/200 epochs, BCE/Dice-type loss, batchgenerators
          spatial + brightness + noise augmentation).

    Hyperparameters: ``P``, ``ALPHA``, ``STAGES``, ``MEAN_RANGE``, ``STD_RANGE``, ``EPS`` (``--hparam``).
    """

    P = 0.5
    ALPHA = 0.1
    STAGES = (1, 2)
    MEAN_RANGE = (0.0, 1.0)
    STD_RANGE = (0.0, 1.0)
    EPS = 1e-6

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plan's network (as ``nnUNetTrainer`` builds it) with TriD on encoder stages ``STAGES``.

        Also called by nnU-Net's predictor; the modules are inactive in eval mode and hold no state.

        Raises:
            ValueError: a stage of ``STAGES`` that the configuration's encoder does not have.
        """
        network = NnzooTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                          num_output_channels, enable_deep_supervision)
        try:
            attach_random_style(network, cls.STAGES, p=cls.P, alpha=cls.ALPHA, mean_range=cls.MEAN_RANGE,
                                std_range=cls.STD_RANGE, eps=cls.EPS)
        except ValueError as e:
            patch = list(configuration_manager.patch_size)
            raise ValueError(f"{cls.__name__}: STAGES={','.join(map(str, cls.STAGES))} does not fit the "
                             f"configuration with patch {patch}: {e}; choose others with --hparam STAGES=...") from None
        return network
