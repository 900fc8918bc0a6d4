"""The query side of the ONNX backend: one exported tower of a collection's model run in ONNX Runtime.

An export folder (written by :mod:`.onnx_export`, which needs torch) holds, per tower, ``<tower>.onnx``
(the graph, already optimised by ONNX Runtime) with its weights as external data in
``<tower>.onnx.data``, and a ``meta.json`` written last: its presence marks the export complete. This
module owns that layout and the reading side: :func:`read_meta` checks the meta against what the caller
expects (model fingerprint, dimension), :meth:`OnnxTower.load` creates a CPU session with graph
optimisation off (the saved graph is optimised already, so creating the session is little more than
mapping the weights), and the tower encodes token ids or pixels to float32 ``(n, d)`` L2-normalised rows.
The few helpers that put a finished folder in place (:func:`install_export`, :func:`keep_towers`,
:func:`remove_stale_exports`) are here too, next to the layout they write.

It never imports torch, open_clip, transformers or timm: a text query through it pays for numpy and
onnxruntime only. Every refusal is a :class:`~searchengine.errors.ModelLoadError` (the caller falls
back to torch).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._fs import file_checksum, fsync_dir, pid_alive, writer_pid
from ..errors import ModelLoadError

__all__ = ["META", "FORMAT", "TOWERS", "OUTPUT", "OnnxTower", "read_meta", "tower_files", "check_files",
           "make_session", "default_threads", "normalise_rows", "install_export",
           "remove_stale_exports", "link_or_copy", "keep_towers"]

META = "meta.json"
FORMAT = 1
TOWERS = ("text", "image")
#: the name of every tower's output: the unnormalised embedding ``(batch, dim)``
OUTPUT = "embedding"
_REQUIRED = ("format", "spec", "fingerprint", "dim", "opset", "onnxruntime", "towers")


def read_meta(folder: Path | str, *, fingerprint: str | None = None, dim: int | None = None,
              towers: Sequence[str] = ()) -> dict[str, Any]:
    """The export's ``meta.json``, refused (:class:`ModelLoadError`) when the folder holds no complete
    export, when it was written in another format, or when it does not match ``fingerprint`` / ``dim``
    or lacks one of ``towers``."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"no complete ONNX export in {folder} (no {META})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or any(k not in meta for k in _REQUIRED):
        raise ModelLoadError(f"{path} is not an ONNX export's meta (it needs {', '.join(_REQUIRED)})")
    if meta["format"] != FORMAT:
        raise ModelLoadError(f"{path} has format {meta['format']!r}, this version reads {FORMAT}: export again")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise ModelLoadError(f"the ONNX export in {folder} is of model {meta['fingerprint']} "
                             f"({meta['spec']}), not {fingerprint}: it is stale, export again")
    if dim is not None and int(meta["dim"]) != int(dim):
        raise ModelLoadError(f"the ONNX export in {folder} gives {meta['dim']}-d vectors, expected {dim}")
    missing = [t for t in towers if t not in meta["towers"]]
    if missing:
        raise ModelLoadError(f"the ONNX export in {folder} has no {' or '.join(missing)} tower")
    return meta


def tower_files(meta: dict[str, Any], tower: str) -> dict[str, int]:
    """``{file name: size in bytes}`` of one tower's files as the meta records them."""
    try:
        return {name: int(info["bytes"]) for name, info in meta["towers"][tower]["files"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"the ONNX export's meta has no usable file list for the {tower} tower") from exc


def check_files(folder: Path | str, meta: dict[str, Any], tower: str, *, deep: bool = False) -> Path:
    """The tower's ``.onnx`` path, once each of its files is present with the recorded size (and, with
    ``deep``, the recorded SHA-256: reads every byte, so not for the cold query path)."""
    folder = Path(folder)
    for name, size in tower_files(meta, tower).items():
        path = folder / name
        try:
            actual = path.stat().st_size
        except OSError:
            raise ModelLoadError(f"the ONNX export in {folder} is incomplete: {name} is missing") from None
        if actual != size:
            raise ModelLoadError(f"the ONNX export in {folder} is damaged: {name} holds {actual} bytes, "
                                 f"{size} were written")
        expected = meta["towers"][tower]["files"][name].get("sha256")
        if deep and expected and file_checksum(path) != expected:
            raise ModelLoadError(f"the ONNX export in {folder} is damaged: {name} is not the file written")
    return folder / meta["towers"][tower]["file"]


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may use, at most 8 (one query gains nothing beyond)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def make_session(path: Path | str, threads: int | None = None, prepack: bool = True) -> Any:
    """A CPU ``InferenceSession`` of an already optimised graph: optimisation off, one inter-op thread.

    ``prepack=False`` skips re-laying the weights out for the matrix kernels when the session is
    created: a session made for one query is ready sooner, and each later run is a little slower."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (Fail, InvalidGraph, ...) and RuntimeError
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def _same_runtime(meta: dict[str, Any]) -> None:
    """An optimised graph may use the contrib ops of the onnxruntime that wrote it: refuse another minor."""
    import onnxruntime as ort

    if str(meta["onnxruntime"]).split(".")[:2] != ort.__version__.split(".")[:2]:
        raise ModelLoadError(f"the ONNX export was optimised by onnxruntime {meta['onnxruntime']}, "
                             f"this is {ort.__version__}: export again")


class OnnxTower:
    """One tower's session and what its meta says about the inputs."""

    def __init__(self, tower: str, session: Any, meta: dict[str, Any]) -> None:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}: one of {', '.join(TOWERS)}")
        self.tower = tower
        self.session = session
        self.meta = meta
        self.dim = int(meta["dim"])
        self.input_names: list[str] = [i.name for i in session.get_inputs()]
        info = meta["towers"].get(tower, {})
        if info.get("inputs") and list(info["inputs"]) != self.input_names:
            raise ModelLoadError(f"the {tower} graph takes {self.input_names}, its meta says {info['inputs']}")

    @classmethod
    def load(cls, folder: Path | str, tower: str, *, fingerprint: str | None = None, dim: int | None = None,
             threads: int | None = None, deep: bool = False, prepack: bool = True) -> "OnnxTower":
        """The ``tower`` (``text`` or ``image``) of the export in ``folder``; :class:`ModelLoadError` when
        the export is incomplete, damaged, stale (``fingerprint``, ``dim``) or from another onnxruntime.
        ``prepack``: see :func:`make_session` (False for a process that encodes one query and exits)."""
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}: one of {', '.join(TOWERS)}")
        meta = read_meta(folder, fingerprint=fingerprint, dim=dim, towers=(tower,))
        _same_runtime(meta)
        path = check_files(folder, meta, tower, deep=deep)
        return cls(tower, make_session(path, threads, prepack), meta)

    # -- text ----------------------------------------------------------------------------
    def encode_tokens(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Token ids ``(n, L)`` (as the model's tokenizer gives them) -> float32 ``(n, d)``, L2-normalised.

        A tower with a fixed context takes exactly ``context_length`` ids a row; one that takes an
        attention mask gets ``ids != pad_id`` when ``mask`` is None."""
        self._expect("text")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (n, length), got shape {ids.shape}")
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        text = self.meta.get("text", {})
        if text.get("fixed_length") and ids.shape[1] != self.meta.get("context_length"):
            raise ValueError(f"this text tower takes {self.meta.get('context_length')} ids a row, got {ids.shape[1]}")
        feeds = {self.input_names[0]: ids}
        if len(self.input_names) > 1:
            if mask is None:
                mask = ids != int(text.get("pad_id", 0))
            mask = np.ascontiguousarray(mask, dtype=np.int64)
            if mask.shape != ids.shape:
                raise ValueError(f"the attention mask {mask.shape} does not match the ids {ids.shape}")
            feeds[self.input_names[1]] = mask
        return normalise_rows(self.session.run([OUTPUT], feeds)[0])

    # -- images --------------------------------------------------------------------------
    def prepare_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 ``(H, W, 3)`` arrays (the PIL stage's output) -> float32 ``(n, 3, H, W)`` scaled to [0, 1]
        and normalised with the model's mean and std: the torch tensor stage, in numpy."""
        norm = self.meta.get("normalize")
        if not norm:
            raise ModelLoadError("this export records no mean/std (its tensor stage is not a plain Normalize)")
        batch = np.stack([np.asarray(p, dtype=np.uint8) for p in pixels]).astype(np.float32)
        batch = batch.transpose(0, 3, 1, 2) / np.float32(255.0)
        mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(norm["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((batch - mean) / std, dtype=np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 ``(n, 3, S, S)`` after the tensor stage -> float32 ``(n, d)``, L2-normalised."""
        self._expect("image")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        size = self.meta.get("image_size")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or (size and pixels.shape[2:] != (size, size)):
            raise ValueError(f"pixels must be (n, 3, {size}, {size}), got shape {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise_rows(self.session.run([OUTPUT], {self.input_names[0]: pixels})[0])

    def encode_images(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`prepare_pixels` then :meth:`encode_pixels`."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.prepare_pixels(pixels))

    def _expect(self, tower: str) -> None:
        if self.tower != tower:
            raise ValueError(f"this is the {self.tower} tower, not the {tower} tower")


# -- the write side of the layout (used by .onnx_export; no torch here either) ----------------------
def keep_towers(folder: Path, tmp: Path, meta: dict[str, Any], exported: Sequence[str]) -> tuple[str, ...]:
    """Hard-link (or copy) the towers of an earlier export of the same model that were not exported again."""
    try:
        old = read_meta(folder, fingerprint=meta["fingerprint"], dim=meta["dim"])
    except ModelLoadError:
        return ()
    if (old["onnxruntime"], old["opset"], old.get("text")) != (meta["onnxruntime"], meta["opset"], meta["text"]):
        return ()
    kept = []
    for tower in [t for t in old["towers"] if t in TOWERS and t not in exported]:
        try:
            check_files(folder, old, tower)
            for name in old["towers"][tower]["files"]:
                link_or_copy(folder / name, tmp / name)
        except (ModelLoadError, OSError):
            for name in old["towers"][tower]["files"]:
                (tmp / name).unlink(missing_ok=True)
            continue
        meta["towers"][tower] = old["towers"][tower]
        kept.append(tower)
    return tuple(kept)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def install_export(tmp: Path, folder: Path) -> None:
    """Put a finished export folder ``tmp`` in ``folder``'s place with ``os.replace`` (the old one, if any,
    moved aside first and removed after: a reader meanwhile finds no export and falls back)."""
    fsync_dir(tmp)
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        if old is not None:
            os.replace(old, folder)
        raise
    fsync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_exports(folder: Path) -> None:
    """Remove temp folders of ``folder``'s exports whose writer process is gone (killed mid-export)."""
    for pattern in (f".{folder.name}.*.tmp", f".{folder.name}.*.old"):
        for path in folder.parent.glob(pattern):
            pid = writer_pid(path)
            if path.is_dir() and not (pid is not None and pid_alive(pid)):
                shutil.rmtree(path, ignore_errors=True)


def normalise_rows(arr: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (a zero row stays zero)."""
    arr = np.asarray(arr, dtype=np.float32)
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
