"""Loading nnU-Net checkpoints without executing pickled code.

``torch.load(..., weights_only=True)`` only rebuilds tensors, containers and the classes on an
allow-list. nnU-Net checkpoints also hold numpy scalars and arrays (logged metrics); those numpy
reconstructors are the only extra globals allowed here. A checkpoint that needs anything else is
refused with a clear error rather than unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import NnzooError

__all__ = ["safe_globals", "load_checkpoint_safely", "check_weights_fit"]


def safe_globals() -> list:
    """The numpy globals nnU-Net checkpoints need, under numpy 2 and numpy 1 module names."""
    from numpy._core import multiarray

    out: list = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    out += [(multiarray.scalar, "numpy.core.multiarray.scalar"),
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    out += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return out


def load_checkpoint_safely(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load an nnU-Net checkpoint with ``weights_only=True`` and nnzoo's allow-list.

    Args:
        path: checkpoint file.
        map_location: where to put tensors.

    Returns:
        The checkpoint dict.

    Raises:
        NnzooError: missing file, a file that is not a checkpoint, or one that needs globals
            outside the allow-list (arbitrary pickled code is never run).
    """
    path = Path(path)
    if not path.is_file():
        raise NnzooError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
        text = str(e)
        if "Unsupported global" in text:
            detail = next(ln.strip() for ln in text.splitlines() if "Unsupported global" in ln)
            raise NnzooError(f"{path}: refused to load, it contains objects outside nnzoo's allow-list for safe "
                             f"loading ({detail})") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        raise NnzooError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "trainer_name" not in ckpt:
        raise NnzooError(f"{path}: not an nnU-Net checkpoint (no network_weights/trainer_name)")
    return ckpt


def check_weights_fit(network, weights: dict, path: str | Path, *, what: str,
                      skip: tuple[str, ...] = ()) -> None:
    """The checkpoint's weights have every parameter of ``network`` with the same shape (one clear error).

    Args:
        network: the network the weights are for (may live on the meta device).
        weights: the checkpoint's ``network_weights``.
        path: the checkpoint file (named in the message).
        what: the network, for the message (e.g. ``"nnUNetTrainer's 2d network"``).
        skip: substrings of parameter names not compared (e.g. ``".seg_layers."`` for pretrained weights).

    Raises:
        NnzooError: a missing parameter, a shape that differs, or (without ``skip``) an unexpected one.
    """
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items() if not any(s in k for s in skip)}
    given = {k[7:] if k.startswith("module.") and k not in expected else k: tuple(v.shape)
             for k, v in weights.items()}
    missing = [k for k in expected if k not in given]
    differ = [k for k in expected if k in given and given[k] != expected[k]]
    extra = [] if skip else [k for k in given if k not in expected]
    if missing or differ or extra:
        first = (f"{differ[0]} is {list(given[differ[0]])}, the network's is {list(expected[differ[0]])}" if differ
                 else f"{missing[0]} is missing" if missing else f"{extra[0]} is not in the network")
        raise NnzooError(f"{path}: its weights do not fit {what} ({len(missing)} missing, {len(differ)} of another "
                         f"shape, {len(extra)} unexpected; e.g. {first}): a checkpoint of another trainer, "
                         "configuration or dataset?")
