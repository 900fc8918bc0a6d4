"""Where and in which precision a model runs: the device choice, AMX detection on CPUs, and reduced
precision (bf16/fp16) kept only when the model's probe embeddings stay close to fp32."""

from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError

__all__ = ["select_device", "cpu_has_amx", "reduce_precision", "settle_cpu_precision", "MIN_PRECISION_COSINE"]

#: the least cosine between a reduced-precision embedding and fp32 that ``auto`` accepts
MIN_PRECISION_COSINE = 0.99


class _Tunable(Protocol):
    """What precision tuning needs of an encoder (:class:`searchengine.models.clip.ClipEncoder`)."""

    model: Any
    dtype: Any
    precision_note: str

    def probe(self) -> np.ndarray: ...


def select_device(device: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} requested but MPS is not available; use --device cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later): bf16 matmuls there run ~4x fp32."""
    import torch

    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except RuntimeError:
        return False


def settle_cpu_precision(encoder: _Tunable, precision: str, device: str) -> None:
    """The precision of an fp32 model off CUDA: bf16/fp16 when asked; with ``auto``, bf16 on a CPU
    with AMX when the probe stays within :data:`MIN_PRECISION_COSINE` of fp32; else fp32."""
    if precision in ("bf16", "fp16"):
        reduce_precision(encoder, precision, check=False)
    elif precision == "auto" and device == "cpu" and cpu_has_amx():
        reduce_precision(encoder, "bf16", check=True)
    else:
        encoder.precision_note = "fp32" + ("" if precision == "fp32" or device != "cpu" else
                                           " (this CPU has no AMX, where bf16 would pay)")


def reduce_precision(encoder: _Tunable, precision: str, check: bool) -> None:
    """Run ``encoder``'s model in bf16/fp16 on CPU; with ``check``, only if the probe stays within
    :data:`MIN_PRECISION_COSINE` of fp32 (else it stays fp32, and the note says why)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    reference = encoder.probe() if check else None
    original = encoder.model, encoder.dtype
    encoder.model, encoder.dtype = copy.deepcopy(encoder.model).to(dtype), dtype
    if reference is None:
        encoder.precision_note = f"{precision} (asked for)"
        return
    try:
        cosine = float(np.min(np.sum(encoder.probe() * reference, axis=1)))
    except (RuntimeError, TypeError) as exc:  # an op without a bf16 kernel: stay fp32
        encoder.model, encoder.dtype = original
        encoder.precision_note = f"fp32 ({precision} failed: {str(exc).splitlines()[0][:120]})"
        return
    if cosine < MIN_PRECISION_COSINE:
        encoder.model, encoder.dtype = original
        encoder.precision_note = f"fp32 ({precision} probe cosine {cosine:.4f} < {MIN_PRECISION_COSINE})"
    else:
        encoder.precision_note = f"{precision} (AMX; probe cosine {cosine:.5f} to fp32)"
