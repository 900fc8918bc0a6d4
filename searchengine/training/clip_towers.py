"""Contrastive fine-tuning of an open_clip model's towers: by default the image tower locked and its
embeddings cached (LiT), the text tower and the temperature trained; optionally the image tower too.
The result is saved as a ``local-dir:`` model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..imaging import to_rgb
from ..models.clip import fingerprint_id, load_encoder, parse_spec
from .datasets import Pair
from .loop import EpochStats, TrainOptions, TrainReport, contrastive_features, info_nce, run_epochs, val_captions
from .metrics import retrieval_recall

__all__ = ["train_clip_towers"]


def train_clip_towers(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *, base: str, out: Path,
                      opts: TrainOptions, device: str, cache_dir: Path | None, report: TrainReport,
                      on_epoch: Callable[[EpochStats], None] | None,
                      progress: Callable[[int], None] | None) -> None:
    """Fine-tune ``base`` (an open_clip spec) and save it to ``out``."""
    import torch

    enc = load_encoder(base, device, "fp32")  # training starts from the full-precision weights
    _check_saveable(base)  # fail before the epochs, not after
    model, dev = enc.model.float(), enc.device
    enc.dtype = torch.float32  # trained in fp32 even where the encoder loaded in fp16
    cache_path = None
    if cache_dir is not None and not opts.unlock_image:  # keyed by the weights (probe fingerprint)
        cache_path = cache_dir / f"openclip-{fingerprint_id(enc.probe())}-{enc.image_size}.npz"
    train, val, _ = contrastive_features(_image_rows(enc, opts.unlock_image), None, enc.image_size, train_pairs,
                                         val_pairs, cache_path, 32, progress, report)
    params = _trainable(model, opts, base)
    model.train()

    def encode_text(texts: list[str]) -> Any:
        emb = model.encode_text(enc.tokenizer(texts).to(dev))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def encode_image(rows: np.ndarray) -> Any:
        if not opts.unlock_image:
            return torch.from_numpy(rows).to(dev)
        batch = torch.from_numpy(rows).permute(0, 3, 1, 2).to(dev).float().div(255.0)
        return torch.nn.functional.normalize(model.encode_image(enc.tensor_stage(batch)).float(), dim=-1)

    def step(idx: np.ndarray, texts: list[str]) -> Any:
        return info_nce(encode_image(train.img[idx]), encode_text(texts), model.logit_scale)

    flat, owner, first = val_captions(val)

    def evaluate() -> tuple[dict[int, float], dict[int, float]]:
        model.eval()
        with torch.no_grad():
            t = encode_text(flat).cpu().numpy()
            i = np.concatenate([encode_image(val.img[s : s + 64]).cpu().numpy() for s in range(0, len(val.img), 64)])
        model.train()
        return retrieval_recall(i, t, owner, first, opts.ks)

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    model.load_state_dict(run_epochs(params, step, evaluate, snapshot, train, opts, report, on_epoch))
    model.eval()
    t2i, i2t = evaluate()
    report.final = {"text_to_image": t2i, "image_to_text": i2t}
    _save_open_clip(base, model, out)


def _image_rows(enc: Any, unlock_image: bool) -> Callable[[list], np.ndarray]:
    """What a split keeps per image: decoded pixels (in memory) when the image tower is trained too;
    otherwise (LiT) the locked tower's embeddings, computed once and cached on disk."""
    if unlock_image:
        return lambda images: np.stack([enc.pixels_from_pil(to_rgb(im)) for im in images])
    return enc.encode_images


def _trainable(model: Any, opts: TrainOptions, base: str) -> list:
    """Freeze ``model`` but the parameters ``opts`` trains (always the temperature); returns those."""
    for p in model.parameters():
        p.requires_grad_(False)
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    if opts.lock_text:
        text_params = [p for n, p in model.named_parameters()
                       if n == "text_projection" or n.startswith(("text.proj", "text.text_projection"))]
        if not text_params:
            raise ConfigError(f"--lock-text: found no text projection to train in {base!r}")
    image_params = [p for n, p in model.named_parameters() if n.startswith("visual.")] if opts.unlock_image else []
    params = text_params + image_params + [model.logit_scale]
    for p in params:
        p.requires_grad_(True)
    return params


def _check_saveable(base: str) -> None:
    import open_clip

    name = parse_spec(base).model_name
    if not name.startswith("local-dir:") and open_clip.get_model_config(name) is None:
        raise ConfigError(f"cannot save a trained copy of {base!r} (no local open_clip config); "
                          "use a local-dir: or ARCH:/weights spec")


def _save_open_clip(base: str, model: Any, out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    parsed = parse_spec(base)
    if parsed.model_name.startswith("local-dir:"):
        cfg = json.loads((Path(parsed.model_name.split(":", 1)[1]) / "open_clip_config.json").read_text())
    else:
        model_cfg = open_clip.get_model_config(parsed.model_name)
        if model_cfg is None:
            raise ConfigError(f"cannot find the config of {base!r} to save the trained model")
        pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in pre.items() if k != "size"}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
