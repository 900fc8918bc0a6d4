"""Model-only encoding speed: images/s and texts/s for each model spec, on this machine.

    python tests/benchmarks/bench_encode.py lite local-dir:data/cache/models/vit-b-32-random

Images are random pixels already at the model's input size (no decoding), batch 32; texts are
short captions, batch 256. Two warm-up batches, then the median of 5 timed batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _median_rate(fn, n_items: int, repeats: int = 5) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_items / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch

    from searchengine.models.clip import load_encoder

    for spec in args.specs:
        enc = load_encoder(spec, args.device)
        size = enc.image_size
        pixels = [np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8) for i in range(32)]
        texts = [f"a photo of a {w} on a table" for w in ("cat", "dog", "red car", "blue shoe")] * 64
        img_rate = _median_rate(lambda e=enc, p=pixels: e.encode_pixels(p), len(pixels))
        txt_rate = _median_rate(lambda e=enc, t=texts: e.encode_texts(t), len(texts))
        print(json.dumps({"model": spec, "device": args.device, "threads": torch.get_num_threads(), "image_size": size,
                          "dim": enc.dim, "images_per_s": round(img_rate, 1), "texts_per_s": round(txt_rate, 1)}))


if __name__ == "__main__":
    main()
