#!/usr/bin/env python3
"""Build a folder of web-sized photos for the ingestion benchmarks.

Real photos are few offline (58 wallpapers, 91 opencv samples), so this cuts many
JPEGs out of them: each output is a random crop of a random source photo (any
aspect from 9:16 to 21:9), resized to a random area between ``--min-mp`` and
``--max-mp`` megapixels (default 0.3-2, the sizes of web and e-commerce images),
sometimes mirrored or tinted, and saved as baseline JPEG at quality 80-95. Every
output is a different picture of real photographic content, so JPEG decoding costs
what it costs on real photos (synthetic noise or flat colour would not).

    python data/make_photo_corpus.py --count 3000          # -> data/cache/photos-web/

Output (``--out``, default ``data/cache/photos-web``): ``NNNN/IIIII.jpg`` in folders of
500, plus ``manifest.jsonl`` (path, source, width, height, bytes). Deterministic for a
given ``--seed`` and source set; a second run with the same arguments does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

CACHE = Path(os.environ.get("SEARCHENGINE_DATA_CACHE") or Path(__file__).resolve().parent / "cache")
DEFAULT_SOURCES = (CACHE / "wallpapers", CACHE / "opencv-samples")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SOURCE_LONG_SIDE = 2600  # sources are held in memory at most this large (2 MP outputs need ~1700 px)
MIN_SOURCE_SIDE = 240
PER_FOLDER = 500


def load_sources(folders: list[Path]) -> list[tuple[str, Image.Image]]:
    sources = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
            try:
                with Image.open(path) as im:
                    im.draft("RGB", (SOURCE_LONG_SIDE, SOURCE_LONG_SIDE))
                    im = ImageOps.exif_transpose(im).convert("RGB")
            except OSError as exc:
                print(f"skipping {path}: {exc}", file=sys.stderr)
                continue
            if min(im.size) < MIN_SOURCE_SIDE:
                continue
            im.thumbnail((SOURCE_LONG_SIDE, SOURCE_LONG_SIDE), Image.Resampling.LANCZOS)
            sources.append((str(path), im))
    return sources


def make_one(rng: random.Random, source: Image.Image, min_mp: float, max_mp: float) -> tuple[Image.Image, int]:
    aspect = rng.choice((4 / 3, 3 / 2, 16 / 9, 1.0, 21 / 9, 3 / 4, 2 / 3, 9 / 16))
    sw, sh = source.size
    # the largest crop of that aspect, then a random 50-100% of it
    cw, ch = (sw, round(sw / aspect)) if sw / sh < aspect else (round(sh * aspect), sh)
    scale = rng.uniform(0.5, 1.0)
    cw, ch = max(16, round(cw * scale)), max(16, round(ch * scale))
    x, y = rng.randint(0, sw - cw), rng.randint(0, sh - ch)
    crop = source.crop((x, y, x + cw, y + ch))
    area = rng.uniform(min_mp, max_mp) * 1e6
    w = max(16, round((area * aspect) ** 0.5))
    h = max(16, round(w / aspect))
    out = crop.resize((w, h), Image.Resampling.BICUBIC)  # upscaling small sources is fine for speed tests
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    if rng.random() < 0.3:
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.3, 1.6))
    return out, rng.randint(80, 95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=CACHE / "photos-web")
    parser.add_argument("--sources", type=Path, nargs="*", default=list(DEFAULT_SOURCES))
    parser.add_argument("--min-mp", type=float, default=0.3)
    parser.add_argument("--max-mp", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.min_mp <= args.max_mp:
        parser.error("need 0 < --min-mp <= --max-mp")

    manifest = args.out / "manifest.jsonl"
    stamp = json.dumps({"count": args.count, "seed": args.seed, "min_mp": args.min_mp, "max_mp": args.max_mp,
                        "sources": sorted(map(str, args.sources))})
    stamp_file = args.out / ".stamp.json"
    if manifest.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        print(f"photos-web: {args.count} images in {args.out} (already made)")
        return 0
    sources = load_sources([s for s in args.sources if s.is_dir()])
    if not sources:
        print("no source photos found; run: python data/fetch.py wallpapers opencv-samples", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp_manifest = manifest.with_suffix(".tmp")
    with open(tmp_manifest, "w", encoding="utf-8") as fh:
        for i in range(args.count):
            name, source = sources[rng.randrange(len(sources))]
            image, quality = make_one(rng, source, args.min_mp, args.max_mp)
            rel = Path(f"{i // PER_FOLDER:04d}") / f"{i:05d}.jpg"
            (args.out / rel.parent).mkdir(exist_ok=True)
            image.save(args.out / rel, "JPEG", quality=quality)
            fh.write(json.dumps({"path": str(rel), "source": name, "width": image.width, "height": image.height,
                                 "bytes": (args.out / rel).stat().st_size}) + "\n")
            if (i + 1) % 250 == 0:
                print(f"  {i + 1}/{args.count}", file=sys.stderr)
    os.replace(tmp_manifest, manifest)
    stamp_file.write_text(stamp)
    print(f"photos-web: {args.count} images in {args.out} from {len(sources)} source photos "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
