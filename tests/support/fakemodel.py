"""A deterministic fake dual encoder whose right answers are known: colours.

An image embeds as the one-hot of its nearest named colour; a text as the one-hot of the colour
word it contains. So "a red square" finds the red image first, always.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from searchengine.models.clip import PROBE_TEXTS, _probe_pixels

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 40),
          "purple": (130, 30, 160), "black": (10, 10, 10), "white": (245, 245, 245), "orange": (250, 140, 20)}
NAMES = list(COLORS)


def small(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((8, 8))


class ColorEncoder:
    spec = "fake:colors"
    image_size = 8
    device = "cpu"
    dim = len(NAMES) + 1
    pil_stage = staticmethod(small)

    def pixels_from_pil(self, image):
        return np.asarray(small(image), dtype=np.uint8)

    def encode_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(pixels), self.dim), np.float32)
        for i, px in enumerate(pixels):
            mean = np.asarray(px, np.float32).reshape(-1, 3).mean(axis=0)
            dist = [np.sum((mean - np.array(c)) ** 2) for c in COLORS.values()]
            out[i, int(np.argmin(dist))] = 1.0
        return out

    def encode_images(self, images) -> np.ndarray:
        return self.encode_pixels([self.pixels_from_pil(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            hits = [j for j, name in enumerate(NAMES) if name in text.lower()]
            out[i, hits[0] if hits else -1] = 1.0
        return out

    def probe(self) -> np.ndarray:
        return np.concatenate([self.encode_pixels([_probe_pixels(8)]), self.encode_texts(PROBE_TEXTS)])


def use_color_model(monkeypatch) -> str:
    """Make every model spec load the colour encoder; returns a spec to pass around."""
    import searchengine.models.clip as clip

    monkeypatch.setattr(clip, "load_encoder", lambda spec, device="auto", precision="auto": ColorEncoder())
    return "fake:colors"


def color_image(path, name: str, size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[name]).save(path)
    return path


def color_folder(folder):
    """``folder`` with one image per colour, ``NAME.png``."""
    for name in COLORS:
        color_image(folder / f"{name}.png", name)
    return folder
