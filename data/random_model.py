"""Write an open_clip architecture with seeded random weights as a ``local-dir:`` model folder.

Speed does not depend on the weight values, so this gives a real-size model for benchmarks
and for trying the CLI where no pretrained weights can be downloaded:

    python data/random_model.py ViT-B-32 data/cache/models/vit-b-32-random
    searchengine index ~/Photos --model local-dir:data/cache/models/vit-b-32-random

Search results from random weights are meaningless; use real weights for real search.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_random_model(arch: str, out: Path, seed: int = 0) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise SystemExit(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out.resolve()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", help="open_clip architecture, e.g. ViT-B-32")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_random_model(args.arch, args.out, args.seed))


if __name__ == "__main__":
    main()
