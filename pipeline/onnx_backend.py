"""ONNX export of a model's networks and an ONNX Runtime network for nnU-Net's predictor.

``nnzoo export-model --onnx`` writes each fold's network as ``fold_<f>/network.onnx`` (with
:data:`ONNX_NETWORK_FILE` beside it: opset, patch size, channels, outputs, mirroring axes) using
PyTorch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs
``onnx`` and ``onnxscript``) at opset :data:`OPSET`. The input is ``(N, C, *patch_size)`` with a
dynamic batch axis; every export is checked against PyTorch with ONNX Runtime before it is kept.

:class:`OnnxFoldsNetwork` runs those files with ONNX Runtime behind a ``torch.nn.Module``: its
``load_state_dict`` selects a fold (see :meth:`OnnxFoldsNetwork.fold_parameters`), so nnU-Net's
``nnUNetPredictor.manual_initialization(network=net, parameters=net.fold_parameters(), ...)`` keeps
its own sliding window, mirroring and fold averaging unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import NnzooError, read_json

__all__ = ["OPSET", "ONNX_FILE", "ONNX_NETWORK_FILE", "INSTALL_HINT", "onnx_available", "require_onnxruntime",
           "require_onnx_exporter",
           "export_onnx", "onnx_files", "read_onnx_metadata", "default_providers", "OnnxFoldsNetwork"]

#: ONNX opset of the exports: torch 2.14's default, and the first with N-D ``GridSample`` (CoTr's 3D sampling)
OPSET = 20
#: a fold's network, in the model folder and the zip
ONNX_FILE = "network.onnx"
#: what prediction needs of it beyond plans.json/dataset.json
ONNX_NETWORK_FILE = "network_onnx.json"
INSTALL_HINT = "pip install 'nnzoo[onnx]'"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def onnx_available() -> bool:
    """Whether ONNX Runtime can be imported (``--backend onnxruntime``)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _missing(packages: Sequence[str]) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def require_onnxruntime():
    """The ``onnxruntime`` module.

    Raises:
        NnzooError: onnxruntime is not installed (with the install command).
    """
    if not onnx_available():
        raise NnzooError(f"ONNX Runtime is not installed (needed to run ONNX networks): {INSTALL_HINT}")
    import onnxruntime

    return onnxruntime


def require_onnx_exporter(flag: str = "--onnx") -> None:
    """PyTorch's ONNX exporter's packages (onnx, onnxscript) and onnxruntime (the check) are installed.

    Raises:
        NnzooError: naming ``flag``, the missing packages and the install command.
    """
    missing = _missing(("onnx", "onnxscript", "onnxruntime"))
    if missing:
        raise NnzooError(f"{flag}: {', '.join(missing)} not installed (PyTorch's ONNX exporter needs onnx and "
                         f"onnxscript, the check after export onnxruntime): {INSTALL_HINT}")


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    text = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return text if len(text) <= 300 else text[:297] + "..."


def _root_cause(e: BaseException) -> BaseException:
    """The innermost cause: the exporter wraps the reason in "Failed to export ... step 1/3" errors."""
    seen = {id(e)}
    while e.__cause__ is not None and id(e.__cause__) not in seen:
        e = e.__cause__
        seen.add(id(e))
    return e


def export_onnx(network: torch.nn.Module, *, path: str | Path, patch_size: Sequence[int], num_input_channels: int,
                opset: int = OPSET, what: str = "the network", verify: bool = True, flag: str = "--onnx") -> dict:
    """Export a network (in eval mode, on the CPU) as ONNX for ``(N, C, *patch_size)`` inputs, N dynamic.

    Args:
        network: the network as prediction builds it (``enable_deep_supervision=False``), weights loaded.
        path: the ``.onnx`` file to write (weights inside it, not as external data).
        patch_size: the configuration's patch size.
        num_input_channels: input channels (nnU-Net's ``determine_num_input_channels``).
        opset: ONNX opset (default :data:`OPSET`).
        what: the network in messages, e.g. ``"nnUNetTrainerCoTr's 3d_fullres network"``.
        verify: run the file with ONNX Runtime on random batches of 2 and of 1 (not the traced input) and
            compare with PyTorch (max abs difference at most ``1e-3 * max(1, max |logit|)``).
        flag: the option named in errors.

    Returns:
        The metadata of the file: ``opset``, ``patch_size``, ``num_input_channels``, ``num_outputs``,
        ``input_name``, ``output_name``, ``dynamic_axes``, ``exporter``, ``torch`` and, with ``verify``,
        ``max_abs_diff``.

    Raises:
        NnzooError: the exporter packages are missing, the network cannot be exported (the reason is
            the exporter's), or ONNX Runtime's output differs from PyTorch's.
    """
    require_onnx_exporter(flag)
    path = Path(path)
    patch = [int(p) for p in patch_size]
    network = network.to("cpu").eval()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, int(num_input_channels), *patch, generator=g)
    with torch.no_grad():
        ref = network(x)
    if not isinstance(ref, torch.Tensor):
        raise NnzooError(f"{flag}: {what} returns {type(ref).__name__}, not one tensor (built with deep "
                         "supervision?)")
    batch = torch.export.Dim("batch", min=1, max=4096)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (x,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                              verbose=False, report=False)
    except Exception as e:  # the exporter raises many kinds; the innermost cause says why
        path.unlink(missing_ok=True)
        cause = _root_cause(e)
        raise NnzooError(f"{flag}: {what} cannot be exported to ONNX opset {opset} ({type(cause).__name__}: "
                         f"{_first_line(cause)}); export without {flag}") from None
    meta = {"format": "nnzoo-onnx", "version": 1, "file": path.name, "opset": opset,
            "patch_size": patch, "num_input_channels": int(num_input_channels), "num_outputs": int(ref.shape[1]),
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "dynamic_axes": {INPUT_NAME: [0], OUTPUT_NAME: [0]},
            "dtype": "float32", "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__}
    if verify:
        ort = require_onnxruntime()
        diff, session = 0.0, None
        for n in (2, 1):  # other inputs than the traced one, and another batch size
            xv = torch.randn(n, int(num_input_channels), *patch, generator=g)
            with torch.no_grad():
                r = network(xv).numpy()
            try:
                session = session or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                out = session.run([OUTPUT_NAME], {INPUT_NAME: xv.numpy()})[0]
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common base class
                path.unlink(missing_ok=True)
                raise NnzooError(f"{flag}: {what} was exported to ONNX opset {opset}, but ONNX Runtime cannot run "
                                 f"it ({_first_line(e)}); export without {flag}") from None
            tol = 1e-3 * max(1.0, float(abs(r).max()))
            d = float(abs(out - r).max()) if out.shape == r.shape else None
            if d is None or not d <= tol:
                path.unlink(missing_ok=True)
                got = (f"output shape {list(out.shape)}, PyTorch's {list(r.shape)}" if d is None
                       else f"max abs difference {d:.3g} > {tol:.3g}")
                raise NnzooError(f"{flag}: {what} exported to ONNX opset {opset} does not agree with PyTorch in "
                                 f"ONNX Runtime ({got}); export without {flag}")
            diff = max(diff, d)
        meta["max_abs_diff"] = diff
    return meta


def onnx_files(model_folder: str | Path, folds: Sequence[int | str]) -> list[Path]:
    """The folds' ONNX networks (``fold_<f>/network.onnx``) of a model folder.

    Args:
        model_folder: the model folder (``plans.json``, ``dataset.json``, ``fold_*/``).
        folds: the folds (``0``, ``"1"``, ``"all"``).

    Returns:
        One file per fold, in the order of ``folds``.

    Raises:
        NnzooError: a fold has no ONNX network (names the file; export with ``--onnx``).
    """
    out = []
    for f in folds:
        p = Path(model_folder) / f"fold_{f}" / ONNX_FILE
        if not p.is_file():
            raise NnzooError(f"{p}: not found; the model has no ONNX network for fold {f}: export it with "
                             "`nnzoo export-model ... --onnx` and install that zip")
        out.append(p)
    return out


def read_onnx_metadata(onnx_file: str | Path) -> dict:
    """The ``network_onnx.json`` beside a fold's ``network.onnx`` (``{}`` when there is none).

    Raises:
        NnzooError: the file is not valid JSON.
    """
    f = Path(onnx_file).with_name(ONNX_NETWORK_FILE)
    return read_json(f, hint="export the model again with --onnx") if f.is_file() else {}


def default_providers(device: str | torch.device | None = None) -> list[str]:
    """ONNX Runtime execution providers: CUDA (then CPU) when onnxruntime has it and ``device`` is not the CPU,
    else the CPU.

    Raises:
        NnzooError: onnxruntime is not installed.
    """
    ort = require_onnxruntime()
    kind = torch.device(device).type if device not in (None, "auto") else "cuda"
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxFoldsNetwork(torch.nn.Module):
    """The ONNX networks of a model's folds as one ``torch.nn.Module`` for nnU-Net's predictor.

    ``forward`` runs the selected fold's ONNX Runtime session; ``load_state_dict`` selects the fold
    (its dicts come from :meth:`fold_parameters`), which is how nnU-Net's predictor switches between
    folds. The module has no parameters: ``.to(device)``, ``.eval()`` and ``torch.compile`` (forward
    is not compiled) change nothing; inputs on any device are run by ONNX Runtime as float32 and the
    output is returned, float32, on the input's device.

    Args:
        files: one ``.onnx`` file per fold (e.g. :func:`onnx_files`).
        device: ``"cpu"`` for the CPU provider only; ``None``, ``"auto"`` or ``"cuda"``: CUDA when onnxruntime
            has it (``onnxruntime-gpu``), else the CPU.
        providers: ONNX Runtime providers (overrides ``device``).
        num_threads: ONNX Runtime's intra-op threads (default: its own choice).

    Raises:
        NnzooError: onnxruntime is missing, no files, a missing or unreadable file, or folds whose inputs
            differ.

    Example::

        net = OnnxFoldsNetwork(onnx_files(model_folder, [0, 1]))
        predictor.manual_initialization(net, plans_manager, configuration_manager, net.fold_parameters(),
                                        dataset_json, trainer_name, mirror_axes)
    """

    def __init__(self, files: Sequence[str | Path], *, device: str | torch.device | None = None,
                 providers: Sequence[str] | None = None, num_threads: int | None = None) -> None:
        super().__init__()
        ort = require_onnxruntime()
        self.files = [Path(f) for f in files]
        if not self.files:
            raise NnzooError("OnnxFoldsNetwork: no .onnx files given (one per fold)")
        self.providers = list(providers) if providers else default_providers(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self._sessions = []
        for f in self.files:
            if not f.is_file():
                raise NnzooError(f"{f}: ONNX network not found")
            try:
                self._sessions.append(ort.InferenceSession(str(f), sess_options=options, providers=self.providers))
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common base class
                raise NnzooError(f"{f}: not a readable ONNX network ({_first_line(e)})") from None
        shapes = [self._input_shape(s, f) for s, f in zip(self._sessions, self.files)]
        if any(s != shapes[0] for s in shapes):
            i = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise NnzooError(f"{self.files[i]}: its input is (N, {', '.join(map(str, shapes[i]))}), that of "
                             f"{self.files[0]} (N, {', '.join(map(str, shapes[0]))}): folds of different models?")
        self.input_shape: tuple[int, ...] = shapes[0]
        self.input_name = self._sessions[0].get_inputs()[0].name
        self.output_name = self._sessions[0].get_outputs()[0].name
        self._fold = 0

    @staticmethod
    def _input_shape(session, file: Path) -> tuple[int, ...]:
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(session.get_outputs()) != 1:
            raise NnzooError(f"{file}: has {len(inputs)} inputs and {len(session.get_outputs())} outputs, not one "
                             "each: not exported by `nnzoo export-model --onnx`")
        shape = inputs[0].shape
        if len(shape) < 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise NnzooError(f"{file}: input shape {shape} is not (N, C, *patch_size) with a fixed patch: not "
                             "exported by `nnzoo export-model --onnx`")
        return tuple(int(d) for d in shape[1:])

    @property
    def num_folds(self) -> int:
        """Number of folds (ONNX files)."""
        return len(self._sessions)

    @property
    def fold(self) -> int:
        """Index of the selected fold (into ``files``)."""
        return self._fold

    def fold_parameters(self) -> list[dict]:
        """One ``{"fold_index": tensor(i)}`` per fold: ``load_state_dict`` of the i-th selects fold ``i``
        (nnU-Net's predictor's ``list_of_parameters``)."""
        return [{"fold_index": torch.tensor(i)} for i in range(self.num_folds)]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Select the fold of a dict from :meth:`fold_parameters` (``strict`` and ``assign`` are ignored).

        Raises:
            NnzooError: not such a dict (e.g. a PyTorch checkpoint's weights), or a fold index out of range.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"fold_index"}:
            keys = list(state_dict)[:3] if isinstance(state_dict, dict) else type(state_dict).__name__
            raise NnzooError(f"OnnxFoldsNetwork selects a fold with a dict of fold_parameters(), not {keys}: "
                             "pass parameters=network.fold_parameters() to the predictor")
        i = int(state_dict["fold_index"])
        if not 0 <= i < self.num_folds:
            raise NnzooError(f"OnnxFoldsNetwork: fold index {i} out of range (it has {self.num_folds} folds)")
        self._fold = i
        return torch.nn.modules.module._IncompatibleKeys([], [])

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "fold_index"] = torch.tensor(self._fold)

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The selected fold's logits of ``x`` (``(N, C, *patch_size)``), float32 on ``x``'s device.

        Raises:
            NnzooError: ``x`` does not have the network's input shape.
        """
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise NnzooError(f"OnnxFoldsNetwork: input of shape {list(x.shape)}, the ONNX network takes "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._sessions[self._fold].run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return (f"folds={self.num_folds}, input=(N, {', '.join(map(str, self.input_shape))}), "
                f"providers={self.providers}")
