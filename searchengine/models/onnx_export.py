"""Export a loaded model's towers to ONNX, verified against torch, in the layout that loads fastest.

Owns the torch side of the ONNX backend (the query side, and the folder layout, are
:mod:`.onnx_runtime`'s). Each tower is traced by ``torch.onnx.export`` (the TorchScript exporter,
fp32, dynamic batch axis) to a raw graph with its weights inline, then run once through ONNX
Runtime with graph optimisation on so that the *optimised* graph is saved, its weights as external
data beside it; the runtime creates its session from that with optimisation off, which skips the
protobuf parse of the weights and the optimisation passes (issue 17's probe: about half the cold time).

Before anything is installed, the saved graph is run through the same code the query side runs
(:class:`~.onnx_runtime.OnnxTower`, numpy preprocessing included) on probe captions and images and
compared with the encoder's own torch output: every row must reach cosine ``min_cosine``
(0.9999), else the files are deleted and :class:`~searchengine.errors.ModelLoadError` is raised.
Files are written into a hidden temp folder beside the target, ``meta.json`` last, and the folder is
put in place with ``os.replace``: a reader sees the old export, none, or the whole new one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .._fs import file_checksum, write_bytes_atomic
from ..errors import ModelLoadError
from . import onnx_runtime as rt
from .backbones import mean_pool
from .clip import ClipEncoder, _probe_pixels, fingerprint_id

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["export_towers", "tower_module", "ExportReport", "TowerReport", "PROBE_CAPTIONS", "OPSET",
           "MIN_COSINE", "OPTIMISATION"]

OPSET = 17
MIN_COSINE = 0.9999
#: the level the saved graph is optimised at: EXTENDED fusions run on any x86/ARM CPU, while ALL adds
#: layout changes (NCHWc) that ONNX Runtime documents as tied to the machine that made them
OPTIMISATION = "ORT_ENABLE_EXTENDED"
#: weights at least this large go to the external data file
EXTERNAL_MIN_BYTES = 1024

PROBE_CAPTIONS = (
    "a photo of a dog on a beach", "red sports car", "cat", "two children playing football in the park at sunset",
    "a bowl of ramen with a soft boiled egg, chopsticks and green onions on a wooden table",
    "ÉCOLE — café crème, naïve façade", "東京の夜景", "a diagram of the 3 phases of mitosis (prophase, metaphase)",
    "invoice #20931 total $1,249.99", "snow-covered mountains reflected in a still lake",
    "close-up of a bee on a yellow flower", "black and white portrait of an old man smiling",
    "an empty parking lot at night under orange street lights", "😀 happy birthday 🎂!!!",
    "the quick brown fox jumps over the lazy dog " * 12, "a", "A PHOTO OF A DOG ON A BEACH",
    "screenshot of a spreadsheet with charts", "aerial view of a harbour with sailing boats", "X-ray of a hand",
)


@dataclass(frozen=True)
class TowerReport:
    file: str
    bytes: int
    min_cosine: float
    probes: int
    export_s: float
    optimise_s: float
    verify_s: float


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    spec: str
    fingerprint: str
    dim: int
    towers: dict[str, TowerReport] = field(default_factory=dict)
    #: towers of an earlier export of the same model carried over unchanged
    kept: tuple[str, ...] = ()


def export_towers(encoder: ClipEncoder, folder: Path, towers: Sequence[str] = rt.TOWERS, *, opset: int = OPSET,
                  min_cosine: float = MIN_COSINE, fingerprint: str | None = None) -> ExportReport:
    """Export, verify and install ``towers`` of an fp32 ``encoder`` into ``folder`` (replaced whole).
    ``fingerprint``: the id to record (a collection's, once its probe was matched); default the encoder's.

    Towers of an earlier export of the same model (same fingerprint and onnxruntime) that are not
    exported again are kept. :class:`ModelLoadError` when a tower cannot be exported or misses
    ``min_cosine`` on a probe (nothing is installed then)."""
    import onnxruntime as ort
    import torch

    towers = tuple(dict.fromkeys(towers))
    if not towers or any(t not in rt.TOWERS for t in towers):
        raise ValueError(f"towers must be some of {rt.TOWERS}, got {towers!r}")
    if encoder.dtype != torch.float32:
        raise ModelLoadError(f"the ONNX export needs the model in fp32, {encoder.spec} is loaded in "
                             f"{encoder.precision}: load it with precision 'fp32'")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    rt.remove_stale_exports(folder)
    with torch.inference_mode():
        fingerprint = fingerprint or fingerprint_id(encoder.probe())
    lite = _is_lite(encoder.model)
    meta: dict[str, Any] = {
        "format": rt.FORMAT, "spec": encoder.spec, "fingerprint": fingerprint, "dim": int(encoder.dim),
        "context_length": _context_length(encoder), "image_size": int(encoder.image_size), "opset": opset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "onnxruntime": ort.__version__,
        "torch": torch.__version__, "optimisation": OPTIMISATION,
        "text": {"kind": "lite" if lite else "open_clip", "fixed_length": not lite, "pad_id": _pad_id(encoder)},
        "normalize": _normalize_of(encoder.tensor_stage), "towers": {},
    }
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        reports = {t: _export_one(encoder, t, tmp, meta, min_cosine) for t in towers}
        kept = rt.keep_towers(folder, tmp, meta, towers)
        text = json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        write_bytes_atomic(tmp / rt.META, text.encode("utf-8"))  # last: it marks the export complete
        rt.install_export(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(folder, encoder.spec, fingerprint, int(encoder.dim), reports, kept)


def tower_module(encoder: ClipEncoder, tower: str) -> tuple["torch.nn.Module", tuple["torch.Tensor", ...],
                                                            list[str], dict[str, dict[int, str]]]:
    """``(module, example inputs, input names, dynamic axes)``: what ``torch.onnx.export`` traces for
    ``tower``. Text: int64 ids ``(batch, context_length)`` (lite: ``input_ids`` and ``attention_mask``
    ``(batch, sequence)``); image: float32 ``(batch, 3, S, S)`` after the tensor stage. The output is
    the unnormalised embedding, computed as the encoder computes it (all positions, no trimming)."""
    import torch

    model, lite = encoder.model, _is_lite(encoder.model)
    if tower == "text":
        feeds = _text_inputs(encoder, PROBE_CAPTIONS[:2])  # two lengths: the example has padding
        names = list(feeds)
        example = tuple(torch.from_numpy(feeds[n]).to(encoder.device) for n in names)
        seq = {1: "sequence"} if lite else {}
        module = _wrapper(_lite_text_forward if lite else _text_forward, model)
        return module, example, names, {n: {0: "batch", **seq} for n in names}
    if tower == "image":
        example = _tensor_pixels(encoder, _probe_images(encoder.image_size)[:2])
        module = _wrapper(_lite_image_forward if lite else _image_forward, model)
        return module, (example,), ["pixels"], {"pixels": {0: "batch"}}
    raise ValueError(f"unknown tower {tower!r}: one of {', '.join(rt.TOWERS)}")


# -- one tower -------------------------------------------------------------------------------
def _export_one(encoder: ClipEncoder, tower: str, tmp: Path, meta: dict[str, Any], min_cosine: float) -> TowerReport:
    module, example, names, axes = tower_module(encoder, tower)
    raw, final = tmp / f"{tower}.raw.onnx", tmp / f"{tower}.onnx"
    start = time.perf_counter()
    _torch_export(module.eval(), example, names, axes, raw, int(meta["opset"]))
    exported = time.perf_counter()
    _optimise(raw, final)
    raw.unlink()
    optimised = time.perf_counter()
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_checksum(p)}
             for p in (final, tmp / f"{final.name}.data") if p.exists()}
    meta["towers"][tower] = {"file": final.name, "inputs": names, "output": rt.OUTPUT, "files": files}
    runtime = rt.OnnxTower(tower, rt.make_session(final), meta)
    cosines = _verify(encoder, runtime)
    worst = float(np.min(cosines))
    if not worst >= min_cosine:  # also refuses NaN
        raise ModelLoadError(f"the ONNX export of the {tower} tower of {encoder.spec} differs from torch: "
                             f"cosine {worst:.6f} on a probe, {min_cosine} needed; not installed")
    meta["towers"][tower].update(min_cosine=worst, probes=len(cosines))
    return TowerReport(final.name, sum(f["bytes"] for f in files.values()), worst, len(cosines),
                       exported - start, optimised - exported, time.perf_counter() - optimised)


def _torch_export(module: Any, example: tuple, names: list[str], axes: dict, path: Path, opset: int) -> None:
    import importlib.util

    import torch

    kwargs = dict(input_names=names, output_names=[rt.OUTPUT], dynamic_axes={**axes, rt.OUTPUT: {0: "batch"}},
                  opset_version=opset, do_constant_folding=True)
    errors = []
    for dynamo in (False, True):
        if dynamo and importlib.util.find_spec("onnxscript") is None:
            break  # the torch.export-based exporter needs onnxscript
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # its fused op has no ONNX form
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation, tracer warnings
                torch.onnx.export(module, example, str(path), dynamo=dynamo, **kwargs)
            return
        except Exception as exc:  # the exporters raise many kinds (RuntimeError, SymbolicValueError, ...)
            first = (str(exc).strip().splitlines() or [""])[0][:300]  # some append the whole graph
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {first}")
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    raise ModelLoadError(f"cannot export {path.stem.split('.')[0]} tower to ONNX: " + "; ".join(errors))


def _optimise(raw: Path, final: Path) -> None:
    """Run the raw graph once through ONNX Runtime so that it saves the optimised graph, big weights
    as external data in ``<final>.data``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMISATION)
    options.optimized_model_filepath = str(final)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{final.name}.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(EXTERNAL_MIN_BYTES))
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot optimise the exported {raw.name}: {exc}") from exc
    if not final.is_file():
        raise ModelLoadError(f"ONNX Runtime did not save the optimised graph {final}")


def _verify(encoder: ClipEncoder, runtime: rt.OnnxTower) -> np.ndarray:
    """Row cosines between the runtime's output and the encoder's torch output, on a batch of probes
    and on one probe alone (batch size 1, and a text without padding)."""
    cos = []
    if runtime.tower == "text":
        for texts in (list(PROBE_CAPTIONS), [PROBE_CAPTIONS[3]]):
            feeds = _text_inputs(encoder, texts)
            got = runtime.encode_tokens(feeds["input_ids"], feeds.get("attention_mask"))
            cos.append(_row_cos(got, encoder.encode_texts(texts)))
    else:
        images = _probe_images(encoder.image_size)
        for batch in (images, images[:1]):
            got = (runtime.encode_images(batch) if runtime.meta.get("normalize")
                   else runtime.encode_pixels(_tensor_pixels(encoder, batch).cpu().numpy()))
            cos.append(_row_cos(got, encoder.encode_pixels(batch)))
    return np.concatenate(cos)


def _row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        raise ModelLoadError(f"the ONNX export gives shape {a.shape}, torch {b.shape}")
    return np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)


# -- inputs ----------------------------------------------------------------------------------
def _text_inputs(encoder: ClipEncoder, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The tokenizer's ids (and, for lite, its attention mask) as int64 arrays, keyed by input name."""
    if _is_lite(encoder.model):
        batch = encoder.tokenizer.hf(list(texts), padding=True, truncation=True,
                                     max_length=encoder.tokenizer.context_length, return_tensors="np")
        return {"input_ids": batch["input_ids"].astype(np.int64),
                "attention_mask": batch["attention_mask"].astype(np.int64)}
    return {"input_ids": encoder.tokenizer(list(texts)).cpu().numpy().astype(np.int64)}


def _probe_images(size: int) -> list[np.ndarray]:
    """uint8 ``(S, S, 3)``: the fingerprint's gradient image, three random ones, a flat grey and a dark one."""
    rng = np.random.default_rng(17)
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    return [_probe_pixels(size), *noise, np.full((size, size, 3), 128, np.uint8), np.full((size, size, 3), 3, np.uint8)]


def _tensor_pixels(encoder: ClipEncoder, images: Sequence[np.ndarray]) -> "torch.Tensor":
    """What ``ClipEncoder.encode_pixels`` feeds the model: scaled to [0, 1] and the tensor stage, fp32."""
    import torch

    batch = torch.from_numpy(np.stack(images)).to(encoder.device).permute(0, 3, 1, 2).float().div_(255.0)
    return encoder.tensor_stage(batch).float().contiguous()


# -- what the encoder is ---------------------------------------------------------------------
def _is_lite(model: Any) -> bool:
    """A LiteCLIP, told by duck type (lite's module imports torch at import)."""
    return hasattr(model, "text_model") and hasattr(model, "project_text") and hasattr(model, "pooled_features")


def _context_length(encoder: ClipEncoder) -> int:
    return int(getattr(encoder.tokenizer, "context_length", None) or encoder.model.context_length)


def _pad_id(encoder: ClipEncoder) -> int:
    hf = getattr(encoder.tokenizer, "hf", None) or getattr(encoder.tokenizer, "tokenizer", None)
    pad = getattr(hf, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def _normalize_of(stage: Any) -> dict[str, list[float]] | None:
    """mean/std when the tensor stage is one ``Normalize`` (what the query side can redo in numpy)."""
    from torchvision import transforms as T

    steps = getattr(stage, "transforms", None)
    if steps and len(steps) == 1 and isinstance(steps[0], T.Normalize) and len(steps[0].mean) == 3:
        return {"mean": [float(v) for v in steps[0].mean], "std": [float(v) for v in steps[0].std]}
    return None


# -- the folder ------------------------------------------------------------------------------
# -- the traced modules (built on demand: this module imports torch only inside functions) ------------
def _wrapper(forward: Any, model: Any) -> "torch.nn.Module":
    """An ``nn.Module`` holding ``model`` whose forward is ``forward(model, *inputs)``."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: "torch.Tensor") -> "torch.Tensor":
            return forward(self.model, *inputs)

    return Tower().eval()


def _text_forward(model: Any, ids: "torch.Tensor") -> "torch.Tensor":
    return model.encode_text(ids)  # open_clip: unnormalised, all context positions


def _image_forward(model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
    return model.encode_image(pixels)


def _lite_text_forward(model: Any, ids: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """LiteCLIP.encode_text with the tokenizer's attention mask as an input (lite derives it as ids != 0)."""
    import torch

    hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    return model.project_text(torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1))


def _lite_image_forward(model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
    """LiteCLIP.encode_image through the eager trunk (not the traced copy lite keeps for CPU speed)."""
    return model.project_image(model.pooled_features(model.trunk.forward_features(pixels)))
