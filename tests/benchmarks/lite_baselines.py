"""Retrieval quality of the lite model and its baselines on a held-out manifest.

    python tests/benchmarks/lite_baselines.py data/cache/tuxpaint/test.jsonl --model lite

Evaluates, through the engine's index and query path (searchengine.training.evaluate), four variants
of one trained lite folder: untrained (random) projections, the ConSE branch alone, the trained
projections alone, and the trained ensemble. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--model", default="lite", help="lite, or local-dir: a trained lite folder")
    parser.add_argument("--max-captions", type=int, default=1)
    args = parser.parse_args()

    import torch

    from searchengine.models.lite import build_lite, resolve_lite, save_lite
    from searchengine.training.datasets import load_pairs
    from searchengine.training.evaluate import evaluate_retrieval

    folder = resolve_lite(args.model)
    if folder is None:
        raise SystemExit(f"{args.model} is not a lite model")
    pairs = [replace(p, captions=p.captions[: args.max_captions]) for p in load_pairs(args.manifest)]
    model, _, _ = build_lite(folder)
    trained_alpha = float(model.alpha)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"untrained projections": ("random", 1.0), "ConSE only": ("trained", 0.0),
                    "trained projections only": ("trained", 1.0), f"ensemble (alpha {trained_alpha:.1f})":
                    ("trained", trained_alpha)}
        for name, (weights, alpha) in variants.items():
            m, _, _ = build_lite(folder)
            with torch.no_grad():
                if weights == "random":
                    torch.manual_seed(0)
                    m.image_proj.reset_parameters()
                    m.text_proj.reset_parameters()
                m.alpha.fill_(alpha)
            out = save_lite(m, Path(tmp) / name.split()[0])
            report = evaluate_retrieval(pairs, model=f"local-dir:{out}")
            rows[name] = {"text_to_image": report.text_to_image, "image_to_text": report.image_to_text}
    print(f"{'variant':<28} {'t2i R@1':>8} {'R@5':>6} {'R@10':>6}   {'i2t R@1':>8} {'R@5':>6} {'R@10':>6}")
    for name, r in rows.items():
        t, i = r["text_to_image"], r["image_to_text"]
        print(f"{name:<28} {t[1]:>8.3f} {t[5]:>6.3f} {t[10]:>6.3f}   {i[1]:>8.3f} {i[5]:>6.3f} {i[10]:>6.3f}")
    print(json.dumps({"manifest": args.manifest, "model": args.model, "images": len(pairs), "results": rows}))


if __name__ == "__main__":
    main()
