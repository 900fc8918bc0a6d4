#!/usr/bin/env python3
"""Build an evaluation set for "find the photo by the words in it".

Each image shows one distinct short phrase (2-3 common English words from a
built-in list) composited onto a real background photo: either a sign (a coloured
plate with text) or text written straight over the picture, at a random position,
size, colour and slight rotation. The backgrounds come from ``--backgrounds``
folders (default: the ``wallpapers`` and ``opencv-samples`` sets of
``data/fetch.py``); without any, generated gradient/noise backgrounds are used.

Output (``--out``, default ``data/cache/textimages``)::

    OUT/images/0000.jpg ...
    OUT/queries.jsonl      {"query": "golden bakery", "path": "images/0000.jpg", "text": "GOLDEN BAKERY"}

``path`` is relative to OUT; ``text`` is the phrase as rendered (case, line break).
``--check`` reads every image back with searchengine.ocr.TextReader and prints the
share of images whose phrase words are all found.

    python data/make_text_images.py --count 60 --seed 0 --check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

CACHE = Path(os.environ.get("SEARCHENGINE_DATA_CACHE") or Path(__file__).resolve().parent / "cache")
DEFAULT_BACKGROUNDS = (CACHE / "wallpapers", CACHE / "opencv-samples")
BACKGROUND_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

# Sign-like vocabulary: a leading word (colour, place, quality) then one or two nouns.
FIRST = (
    "golden silver royal happy lucky sunny green blue little grand old north south east west "
    "central river ocean harbor mountain forest garden city village market station corner main "
    "bright quiet rapid urban coastal valley lake"
).split()
NOUNS = (
    "bakery cafe books pharmacy garage hotel bistro diner ferry museum library theater cinema market "
    "bridge tunnel school bank studio gallery pizza noodle bicycle flowers coffee kitchen grocery "
    "laundry barber bakers fitness parking taxi dental clinic toys pottery camera records furniture "
    "hardware tailor salon candy pets books music tavern brewery bakehouse harbor ferry"
).split()
CASES = ("upper", "upper", "title", "lower")

FONT_NAMES = (
    "DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed-Bold.ttf",
    "LiberationSans-Bold.ttf", "LiberationSans-Regular.ttf", "LiberationSerif-Bold.ttf",
    "FreeSansBold.ttf", "FreeSans.ttf", "NotoSans-Bold.ttf", "NotoSans-Regular.ttf",
    "Arial Bold.ttf", "arialbd.ttf", "Arial.ttf", "arial.ttf", "Verdana.ttf", "Helvetica.ttc",
)
FONT_DIRS = (
    "/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
    "/Library/Fonts", "/System/Library/Fonts", "C:/Windows/Fonts",
)


def find_fonts() -> list[Path]:
    """TrueType fonts on this machine whose names are in FONT_NAMES (may be empty)."""
    wanted, found = set(FONT_NAMES), {}
    for folder in FONT_DIRS:
        for root, _, files in os.walk(os.path.expanduser(folder)):
            for name in files:
                if name in wanted and name not in found:
                    found[name] = Path(root, name)
    return [found[name] for name in FONT_NAMES if name in found]


def load_font(fonts: list[Path], rng: random.Random, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A random font of ``fonts`` at ``size`` px, or Pillow's built-in scalable font."""
    if fonts:
        return ImageFont.truetype(str(rng.choice(fonts)), size)
    return ImageFont.load_default(size=size)


def make_phrases(count: int, rng: random.Random) -> list[list[str]]:
    """``count`` distinct 2-3 word phrases; no phrase's words are a subset of another's."""
    phrases: list[list[str]] = []
    seen: list[set[str]] = []
    for _ in range(count * 1000):
        if len(phrases) == count:
            return phrases
        words = [rng.choice(FIRST), rng.choice(NOUNS)]
        if rng.random() < 0.4:
            words.append(rng.choice(NOUNS))
        if len(set(words)) < len(words) or any(s <= set(words) or set(words) <= s for s in seen):
            continue
        phrases.append(words)
        seen.append(set(words))
    raise SystemExit(f"cannot make {count} distinct phrases from the word list")


def background_files(folders: list[Path]) -> list[Path]:
    """Image files (at least 300 px on the longer side) under ``folders``, sorted."""
    files = []
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in BACKGROUND_SUFFIXES and path.is_file():
                    try:
                        with Image.open(path) as image:
                            if max(image.size) >= 300:
                                files.append(path)
                    except (OSError, ValueError, Image.DecompressionBombError):
                        continue
    return files


def load_background(path: Path, rng: random.Random, size: int) -> Image.Image:
    """A random crop (55-100% of each side) of the photo at ``path``, longer side ``size``."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    crop_w, crop_h = round(width * rng.uniform(0.55, 1.0)), round(height * rng.uniform(0.55, 1.0))
    if not 0.5 <= crop_w / crop_h <= 2.0:  # keep a photo-like aspect ratio
        crop_w = min(width, round(crop_h * 1.5))
        crop_h = min(height, round(crop_w / 1.5))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    scale = size / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def generated_background(rng: random.Random, size: int) -> Image.Image:
    """A busy stand-in photo: colour waves, a gradient, blobs and noise."""
    height = round(size * rng.choice((0.56, 0.66, 0.75)))
    gen = np.random.default_rng(rng.randrange(2**32))
    yy, xx = np.mgrid[0:height, 0:size].astype(np.float64)
    base = gen.uniform(40, 200, 3)
    waves = [
        base[c] + 60 * np.sin(xx / gen.uniform(20, 90) + gen.uniform(0, 6)) * np.cos(yy / gen.uniform(20, 90))
        + 50 * (yy / height - 0.5) for c in range(3)
    ]
    image = Image.fromarray(np.clip(np.stack(waves, -1) + gen.normal(0, 18, (height, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = rng.randrange(size), rng.randrange(height), rng.randrange(20, size // 5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image.filter(ImageFilter.GaussianBlur(2))


def luminance(rgb: tuple[int, ...] | np.ndarray) -> float:
    r, g, b = (float(v) for v in rgb[:3])
    return 0.299 * r + 0.587 * g + 0.114 * b


def random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def styled(words: list[str], rng: random.Random) -> str:
    """The phrase as written: upper/title/lower case, three words sometimes on two lines."""
    case = rng.choice(CASES)
    text = [w.upper() if case == "upper" else w.title() if case == "title" else w for w in words]
    if len(text) == 3 and rng.random() < 0.3:
        return f"{text[0]} {text[1]}\n{text[2]}"
    return " ".join(text)


def render_text(image: Image.Image, text: str, fonts: list[Path], rng: random.Random) -> Image.Image:
    """Composite ``text`` onto ``image`` as a sign or as bare text, slightly rotated."""
    width, height = image.size
    lines = text.count("\n") + 1
    font_size = max(14, round(height * rng.uniform(0.05, 0.11) / math.sqrt(lines)))
    font = load_font(fonts, rng, font_size)
    sign = rng.random() < 0.55
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    for _ in range(20):  # shrink until the text fits in 90% of the width
        stroke = 0 if sign else max(1, font_size // 16)  # room for an outline
        left, top, right, bottom = (
            math.floor(v) for v in probe.multiline_textbbox((0, 0), text, font=font, align="center", stroke_width=stroke)
        )
        if right - left <= 0.9 * width or font_size <= 14:
            break
        font_size = max(14, int(font_size * 0.85))
        font = load_font(fonts, rng, font_size)
    text_w, text_h = right - left + 1, bottom - top + 1
    pad = round(font_size * rng.uniform(0.3, 0.7)) if sign else round(font_size * 0.3)
    layer = Image.new("RGBA", (text_w + 2 * pad, text_h + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    angle = rng.uniform(-7, 7)
    # where it goes (before rotation), to pick colours that contrast with what lies beneath
    rot_w = layer.width * abs(math.cos(math.radians(angle))) + layer.height * abs(math.sin(math.radians(angle)))
    rot_h = layer.width * abs(math.sin(math.radians(angle))) + layer.height * abs(math.cos(math.radians(angle)))
    x = rng.randint(0, max(0, width - math.ceil(rot_w)))
    y = rng.randint(0, max(0, height - math.ceil(rot_h)))
    under_pixels = np.asarray(image.crop((x, y, x + math.ceil(rot_w), y + math.ceil(rot_h)))).reshape(-1, 3)
    under, busy = under_pixels.mean(0), under_pixels.std(0).mean() > 55
    stroke_fill = None
    if sign:
        plate = random_colour(rng)
        while abs(luminance(plate) - luminance(under)) < 40:
            plate = random_colour(rng)
        fill = (255, 255, 255) if luminance(plate) < 128 else (15, 15, 15)
        if rng.random() < 0.5:
            fill = tuple(min(255, c + 150) if luminance(plate) < 128 else max(0, c - 150) for c in plate)
        radius = rng.choice((0, pad // 2, pad))
        draw.rounded_rectangle((0, 0, layer.width - 1, layer.height - 1), radius=radius, fill=plate + (255,),
                               outline=fill + (255,) if rng.random() < 0.3 else None, width=max(2, pad // 5))
    else:
        fill = (250, 250, 250) if luminance(under) < 128 else (10, 10, 10)
        if busy or rng.random() < 0.5:  # an outline, as on posters and photo captions
            stroke_fill = (0, 0, 0) if fill[0] > 128 else (255, 255, 255)
        else:
            stroke = 0
    draw.multiline_text((pad - left, pad - top), text, font=font, fill=fill + (255,), align="center",
                        stroke_width=stroke, stroke_fill=stroke_fill)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    out = image.convert("RGBA")
    out.alpha_composite(layer, (min(x, max(0, width - layer.width)), min(y, max(0, height - layer.height))))
    return out.convert("RGB")


def build(args: argparse.Namespace) -> list[dict[str, str]]:
    rng = random.Random(args.seed)
    fonts = [Path(args.font)] if args.font else find_fonts()
    files = background_files(args.backgrounds)
    print(f"{len(files)} background photos, fonts: {[f.name for f in fonts] or 'Pillow default'}", file=sys.stderr)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("[0-9][0-9][0-9][0-9].jpg"):
        old.unlink()
    rng.shuffle(files)
    records = []
    for i, words in enumerate(make_phrases(args.count, rng)):
        if files:
            background = load_background(files[i % len(files)], rng, args.size)
        else:
            background = generated_background(rng, args.size)
        text = styled(words, rng)
        name = f"images/{i:04d}.jpg"
        render_text(background, text, fonts, rng).save(args.out / name, quality=rng.randint(80, 95))
        records.append({"query": " ".join(words), "path": name, "text": text})
    with open(args.out / "queries.jsonl", "w", encoding="utf-8") as fp:
        fp.writelines(json.dumps(record) + "\n" for record in records)
    return records


def check(out: Path, records: list[dict[str, str]]) -> None:
    """Print how many phrases OCR reads back (all words as words; all words ignoring spaces)."""
    from searchengine.ocr import TextReader

    reader, exact, joined, seconds = TextReader(), 0, 0, []
    for record in records:
        start = time.perf_counter()
        text = reader.read(Image.open(out / record["path"])).lower()
        seconds.append(time.perf_counter() - start)
        words = record["query"].split()
        found = set(re.findall(r"[a-z]+", text))
        exact += all(w in found for w in words)
        joined += all(w in re.sub(r"[^a-z]", "", text) for w in words)
        if not all(w in found for w in words):
            print(f"  {record['path']}: {record['text']!r} -> {text!r}", file=sys.stderr)
    n = len(records)
    print(f"OCR: all words found in {exact}/{n} images ({exact / n:.0%}); "
          f"ignoring spaces {joined}/{n} ({joined / n:.0%}); "
          f"{1000 * sum(seconds[1:]) / max(1, n - 1):.0f} ms per image after the first ({1000 * seconds[0]:.0f} ms)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60, help="number of images (default 60)")
    parser.add_argument("--out", type=Path, default=CACHE / "textimages", help="output folder")
    parser.add_argument("--backgrounds", type=Path, nargs="*", default=list(DEFAULT_BACKGROUNDS),
                        help="folders of background photos (none or missing: generated backgrounds)")
    parser.add_argument("--size", type=int, default=1024, help="longer side of the images in px (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--font", help="a TrueType font file to use instead of the ones found")
    parser.add_argument("--check", action="store_true", help="read the images back with searchengine.ocr")
    args = parser.parse_args(argv)
    records = build(args)
    print(f"{len(records)} images and queries.jsonl in {args.out}")
    if args.check:
        check(args.out, records)


if __name__ == "__main__":
    main()
