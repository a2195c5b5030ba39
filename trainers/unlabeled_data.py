"""Where preprocessed unlabeled images live and how training reads them (images only, never labels).

A raw dataset's ``imagesUnlabeled/`` is preprocessed with the dataset's plans into
``nnUNet_preprocessed/<dataset>/<data_identifier>_unlabeled/`` (see
:mod:`nnzoo.pipeline.unlabeled`), beside the labeled folder, so unlabeled cases never enter
nnU-Net's splits or fold ``all``. Semi-supervised trainers read them, plus the fold's training
cases that a label budget makes unlabeled, through :class:`UnlabeledImageDataset`.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, nnUNetDatasetBlosc2

from .nnunet_compat import load_preprocessed_image

__all__ = ["UNLABELED_SUFFIX", "unlabeled_folder", "unlabeled_identifiers", "UnlabeledImageDataset",
           "PseudoLabeledDataset"]

#: suffix of a configuration's unlabeled folder, after its data identifier
UNLABELED_SUFFIX = "_unlabeled"


def unlabeled_folder(preprocessed_dataset_folder_base: str | os.PathLike, data_identifier: str) -> str:
    """Folder of a configuration's preprocessed unlabeled cases.

    Args:
        preprocessed_dataset_folder_base: ``nnUNet_preprocessed/<dataset>``.
        data_identifier: the configuration's ``data_identifier`` (e.g. ``nnUNetPlans_3d_fullres``).

    Returns:
        ``<preprocessed_dataset_folder_base>/<data_identifier>_unlabeled``.
    """
    return os.path.join(preprocessed_dataset_folder_base, f"{data_identifier}{UNLABELED_SUFFIX}")


def unlabeled_identifiers(folder: str | os.PathLike) -> list[str]:
    """Completely preprocessed cases of an unlabeled folder (empty when it does not exist), sorted."""
    if not os.path.isdir(folder):
        return []
    return sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder)))


class UnlabeledImageDataset(nnUNetBaseDataset):
    """Images of preprocessed cases from one or more folders, never their labels.

    ``load_case`` opens only the image array of a case (see
    :func:`~nnzoo.trainers.nnunet_compat.load_preprocessed_image`) and returns an all-zero
    segmentation (a broadcast view, no memory) and properties with empty ``class_locations``:
    neither the case's segmentation nor its properties file is read.

    Args:
        sources: ``(folder, case identifier)`` pairs. Identifiers occurring in several folders
            are made unique by appending ``@<n>``.
    """

    def __init__(self, sources: list[tuple[str, str]]) -> None:
        self._where: dict[str, tuple[str, str]] = {}
        for folder, key in sources:
            ident, n = key, 1
            while ident in self._where:
                ident, n = f"{key}@{n}", n + 1
            self._where[ident] = (folder, key)
        super().__init__(folder=sources[0][0] if sources else "", identifiers=list(self._where))

    def load_case(self, identifier: str):
        folder, key = self._where[identifier]
        data = load_preprocessed_image(folder, key)
        seg = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        return data, seg, None, {"class_locations": {}}

    @staticmethod
    def save_case(data, seg, properties, output_filename_truncated):
        raise NotImplementedError("UnlabeledImageDataset is read-only")

    @staticmethod
    def get_identifiers(folder: str) -> list[str]:
        return unlabeled_identifiers(folder)


class PseudoLabeledDataset(UnlabeledImageDataset):
    """Unlabeled images with label maps predicted for them (pseudo-labels) instead of labels.

    The image comes from its source folder (image only, as :class:`UnlabeledImageDataset`); the
    pseudo-label ``<identifier>.npy`` and its properties ``<identifier>.pkl`` (nnU-Net's
    ``class_locations``, for foreground oversampling) from ``pseudo_folder``.

    Args:
        sources: ``(folder, case identifier)`` pairs, as :class:`UnlabeledImageDataset`.
        pseudo_folder: where the pseudo-labels were written (by identifier).
    """

    def __init__(self, sources: list[tuple[str, str]], pseudo_folder: str | os.PathLike) -> None:
        super().__init__(sources)
        self.pseudo_folder = str(pseudo_folder)

    def load_case(self, identifier: str):
        data = super().load_case(identifier)[0]
        base = os.path.join(self.pseudo_folder, identifier)
        seg = np.load(base + ".npy", mmap_mode="r")
        with open(base + ".pkl", "rb") as f:
            properties = pickle.load(f)
        return data, seg, None, properties
