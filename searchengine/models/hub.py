"""Where open_clip weights come from: local model folders checked, the Hugging Face cache and offline
mode (``HF_HUB_OFFLINE``, ``HF_ENDPOINT``), and load errors that say what to pass instead."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import ModelLoadError
from .registry import ParsedSpec

__all__ = ["hub_offline", "hub_download_hopeless", "check_local_dir", "explain_load_failure"]

_WEIGHT_SUFFIXES = ("*.safetensors", "*.bin", "*.pth", "*.pt")
_NO_DOWNLOAD = "the download failed (no network?) and they are not in the local cache"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the Hugging Face hub (only cached files are used)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_local_dir(path: Path, spec: str) -> None:
    """Refuse a ``local-dir:`` folder that is missing or holds no open_clip config and weights."""
    if not path.is_dir():
        raise ModelLoadError(f"model folder not found for {spec!r}: {path}")
    if not (path / "open_clip_config.json").is_file():
        raise ModelLoadError(f"{path} has no open_clip_config.json, so {spec!r} is not an open_clip model folder")
    if not any(any(path.glob(p)) for p in _WEIGHT_SUFFIXES):
        raise ModelLoadError(f"{path} has open_clip_config.json but no weights file (.safetensors, .bin, .pth)")


def explain_load_failure(parsed: ParsedSpec, exc: BaseException | None, why: str = _NO_DOWNLOAD) -> ModelLoadError:
    """The error to raise when open_clip could not build ``parsed``: what went wrong, and what to pass."""
    text = str(exc) if exc is not None else ""
    local = parsed.model_name.startswith("local-dir:") or (parsed.pretrained and Path(parsed.pretrained).is_file())
    if local and exc is not None:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return ModelLoadError(f"cannot load the model {parsed.spec!r} from its files: {first[:300]}")
    if "not found in built-ins" in text:
        return ModelLoadError(f"unknown model architecture {parsed.model_name!r} in {parsed.spec!r}")
    if "not a known tag or valid file path" in text:
        return ModelLoadError(
            f"{parsed.pretrained!r} is neither a known pretrained tag of {parsed.model_name} nor an existing file"
        )
    return ModelLoadError(
        f"cannot obtain the weights of {parsed.spec!r}: {why}; "
        "pass --model local-dir:/path/to/model (a folder with open_clip_config.json and weights) "
        "or --model ARCH:/path/to/weights.safetensors"
    )


def hub_download_hopeless(parsed: ParsedSpec) -> bool:
    """True when ``parsed`` needs a Hugging Face download that cannot happen: not cached, and
    offline (``HF_HUB_OFFLINE`` or the hub's host does not resolve). Saves a minute of retries."""
    import open_clip

    if parsed.model_name.startswith("hf-hub:"):
        repo, files = parsed.model_name[len("hf-hub:"):], ["open_clip_config.json"]
    elif parsed.pretrained and not os.path.isfile(parsed.pretrained):
        cfg = open_clip.get_pretrained_cfg(parsed.model_name, parsed.pretrained) or {}
        if not cfg.get("hf_hub"):
            return False
        repo, name = os.path.split(cfg["hf_hub"])  # "org/repo/" -> ("org/repo", "")
        name = name or "open_clip_pytorch_model.bin"
        files = [name, name.rsplit(".", 1)[0] + ".safetensors", "open_clip_model.safetensors"]
    else:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
        return False
    if hub_offline():
        return True
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0].split(":")[0]
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return True
    return False
