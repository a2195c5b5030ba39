"""Input-level augmentations that compose with any trainer (``nnzoo train ... --augment NAME``).

- :func:`gin_augment`: GIN, global intensity non-linear augmentation (Ouyang et al., *Causality-inspired
  single-source domain generalization for medical image segmentation*, IEEE TMI 2022; official code
  github cheng-01037/Causality-Medical-Image-Domain-Generalization, ``models/imagefilter.py`` and
  ``models/imagefilter3d.py``): the image passed through a freshly drawn shallow random convolution
  network, mixed with the original and rescaled to the original's Frobenius norm.
- :func:`augmented_trainer_class`: a trainer class of the same name whose training step applies the
  augmentation to the labeled batch's images (and, for semi-supervised trainers, to the unlabeled
  images); validation and inference are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .semisup import SemiSupervisedTrainer

__all__ = ["AUGMENTATIONS", "gin_augment", "GINAugmentMixin", "GINUnlabeledMixin", "augmented_trainer_class",
           "image_channel_count"]

#: the names ``--augment`` accepts
AUGMENTATIONS: tuple[str, ...] = ("gin",)

#: ``F.leaky_relu``'s default slope, the official activation between GIN's layers
_LEAKY_SLOPE = 0.01
#: added to the output norm before dividing, as in the official ``frob`` normalisation
_NORM_EPS = 1e-5


def _draw(kind: str, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.randn``/``torch.rand`` in float32 on ``device`` (drawn on the generator's device if one is given)."""
    fn = torch.randn if kind == "normal" else torch.rand
    if generator is None:
        return fn(shape, device=device)
    return fn(shape, generator=generator, device=generator.device).to(device)


def _random_conv_layer(x: torch.Tensor, out_channels: int, kernel_sizes: tuple[int, ...], activate: bool,
                       generator: torch.Generator | None) -> torch.Tensor:
    """One random conv layer of GIN: a kernel size drawn from ``kernel_sizes`` (one for the whole batch),
    per-sample N(0, 1) kernels and N(0, 1) per-channel shifts, leaky ReLU unless ``activate`` is False."""
    b, c, *spatial = x.shape
    ndim = len(spatial)
    idx = torch.randint(len(kernel_sizes), (1,), generator=generator,
                        device=generator.device if generator is not None else "cpu")
    k = int(kernel_sizes[int(idx.item())])
    weight = _draw("normal", (b * out_channels, c, *([k] * ndim)), x.device, generator)
    shift = _draw("normal", (b * out_channels,) + (1,) * ndim, x.device, generator)
    conv = F.conv2d if ndim == 2 else F.conv3d
    y = conv(x.reshape(1, b * c, *spatial), weight, padding=k // 2, groups=b) + shift
    if activate:
        y = F.leaky_relu(y, _LEAKY_SLOPE)
    return y.reshape(b, out_channels, *spatial)


def gin_augment(x: torch.Tensor, *, n_layers: int = 4, interm_channels: int = 2, kernel_sizes: tuple[int, ...] = (1, 3),
                frobenius_norm: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """GIN: a random shallow convolution network applied to a batch of images, mixed with the input.

    As the official ``GINGroupConv``/``GINGroupConv3D``: ``n_layers`` convolutions (``C -> interm ->
    ... -> interm -> C``), each with a kernel size drawn uniformly from ``kernel_sizes`` (shared by
    the batch), kernels and per-channel shifts drawn from N(0, 1) independently for every sample, a
    leaky ReLU (slope 0.01) after every layer but the last, stride 1 and "same" padding. The result
    ``g`` is mixed with the input, ``alpha * g + (1 - alpha) * x`` with ``alpha ~ U(0, 1)`` per sample,
    and (``frobenius_norm``) rescaled so that every sample keeps the Frobenius norm (over channels and
    voxels) of its input. Every call draws a new network.

    Computed in float32 with autocast disabled; the output has the input's shape, dtype and device.

    Args:
        x: ``(B, C, X, Y)`` or ``(B, C, X, Y, Z)`` images.
        n_layers: convolution layers (official 4), at least 2.
        interm_channels: channels between the layers (official 2).
        kernel_sizes: odd kernel sizes to draw from (official ``(1, 3)``).
        frobenius_norm: rescale every sample to its input's Frobenius norm (official ``'frob'``).
        generator: random generator (for reproducible draws); None uses the global generators
            (the kernels on ``x``'s device).

    Returns:
        The augmented images.

    Raises:
        ValueError: ``x`` is not 4D/5D, ``n_layers < 2`` or an even kernel size.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"gin_augment expects (B, C, X, Y[, Z]) images, got shape {tuple(x.shape)}")
    if n_layers < 2:
        raise ValueError(f"GIN needs at least 2 layers, got n_layers={n_layers}")
    if not kernel_sizes or any(int(k) % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"GIN kernel sizes must be odd, got {tuple(kernel_sizes)}")
    b, c = x.shape[:2]
    with torch.autocast(x.device.type, enabled=False):
        x32 = x.float()
        h = x32
        for layer in range(n_layers):
            last = layer == n_layers - 1
            h = _random_conv_layer(h, c if last else interm_channels, tuple(kernel_sizes), not last, generator)
        alpha = _draw("uniform", (b,) + (1,) * (x.ndim - 1), x.device, generator)
        mixed = alpha * h + (1.0 - alpha) * x32
        if frobenius_norm:
            in_norm = torch.linalg.vector_norm(x32.reshape(b, -1), dim=1)
            out_norm = torch.linalg.vector_norm(mixed.reshape(b, -1), dim=1)
            mixed = mixed * (in_norm / (out_norm + _NORM_EPS)).view((b,) + (1,) * (x.ndim - 1))
    return mixed.to(x.dtype)


def image_channel_count(dataset_json: dict, total: int) -> int:
    """Input channels that are image channels (the dataset's ``channel_names``), the rest being a
    cascade's previous-stage segmentation; ``total`` if the dataset names none."""
    names = dataset_json.get("channel_names", dataset_json.get("modality")) or {}
    return min(len(names), total) if names else total


class GINAugmentMixin:
    """Applies :func:`gin_augment` to the images of every labeled training batch (labels untouched).

    Put in front of a trainer by :func:`augmented_trainer_class`. The batch's ``data`` is moved to
    the training device, its image channels are replaced by a GIN view (channels a cascade appends,
    the previous stage's segmentation, are kept), then the trainer's own ``train_step`` runs on it.
    Validation and prediction see the original images.

    Attributes:
        GIN_N_LAYERS: random convolution layers (official 4).
        GIN_INTERM_CHANNELS: channels between them (official 2).
        GIN_KERNEL_SIZES: kernel sizes drawn per layer (official ``(1, 3)``).
        GIN_FROBENIUS_NORM: keep every sample's Frobenius norm (official ``'frob'``).
        GIN_PROBABILITY: probability that a sample is augmented (official 1: every sample).
    """

    GIN_N_LAYERS = 4
    GIN_INTERM_CHANNELS = 2
    GIN_KERNEL_SIZES = (1, 3)
    GIN_FROBENIUS_NORM = True
    GIN_PROBABILITY = 1.0
    #: the input augmentations this class applies (checked by :func:`augmented_trainer_class`)
    applied_augmentations: tuple[str, ...] = ("gin",)

    def gin(self, x: torch.Tensor) -> torch.Tensor:
        """GIN views of a batch on the training device (image channels only; each sample with
        probability ``GIN_PROBABILITY``, the others unchanged)."""
        x = x.to(self.device, non_blocking=True)
        n = image_channel_count(self.dataset_json, x.shape[1])
        out = gin_augment(x[:, :n], n_layers=self.GIN_N_LAYERS, interm_channels=self.GIN_INTERM_CHANNELS,
                          kernel_sizes=tuple(self.GIN_KERNEL_SIZES), frobenius_norm=self.GIN_FROBENIUS_NORM)
        if self.GIN_PROBABILITY < 1:
            keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.GIN_PROBABILITY
            out = torch.where(keep, x[:, :n], out)
        return torch.cat([out, x[:, n:]], 1) if n < x.shape[1] else out

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(
            f"GIN augmentation on (--augment gin): {self.GIN_N_LAYERS} random conv layers, "
            f"{self.GIN_INTERM_CHANNELS} intermediate channels, kernel sizes {tuple(self.GIN_KERNEL_SIZES)}, "
            f"Frobenius norm kept: {self.GIN_FROBENIUS_NORM}, probability {self.GIN_PROBABILITY}")

    def train_step(self, batch: dict) -> dict:
        return super().train_step({**batch, "data": self.gin(batch["data"])})


class GINUnlabeledMixin(GINAugmentMixin):
    """:class:`GINAugmentMixin` for semi-supervised trainers: the unlabeled images get GIN too."""

    def next_unlabeled_batch(self) -> torch.Tensor:
        return self.gin(super().next_unlabeled_batch())


def augmented_trainer_class(trainer_class: type, augment: str | None) -> type:
    """The trainer class that ``nnzoo train --augment AUGMENT`` runs.

    Args:
        trainer_class: the trainer class (typically from
            :func:`~nnzoo.trainers.base.nnzoo_trainer_class`).
        augment: one of :data:`AUGMENTATIONS`, or None.

    Returns:
        ``trainer_class`` for None; else a subclass of the same name (nnU-Net derives model folders
        and the checkpoint's ``trainer_name`` from it) with :class:`GINAugmentMixin` (or
        :class:`GINUnlabeledMixin` for a :class:`~nnzoo.trainers.semisup.SemiSupervisedTrainer`)
        in front.

    Raises:
        ValueError: an unknown name (the message names the accepted ones), or a trainer that already
            applies this augmentation (it would be applied twice).
    """
    if augment is None:
        return trainer_class
    if augment not in AUGMENTATIONS:
        raise ValueError(f"--augment {augment!r} is not known; accepted: {', '.join(AUGMENTATIONS)}")
    if augment in getattr(trainer_class, "applied_augmentations", ()):
        raise ValueError(f"--augment {augment}: {trainer_class.__name__} already applies {augment.upper()} "
                         f"in its training step")
    mixin = GINUnlabeledMixin if issubclass(trainer_class, SemiSupervisedTrainer) else GINAugmentMixin
    attrs = {"__doc__": trainer_class.__doc__, "__module__": trainer_class.__module__}
    return type(trainer_class.__name__, (mixin, trainer_class), attrs)
