"""Image-caption pairs and labelled images for training and evaluation (loading and splitting).

Sources:
- a JSONL manifest: one object per line with ``image`` (path, relative to the manifest's folder)
  and ``captions`` (list) or ``caption`` (string), and optionally ``label``;
- a CSV manifest with an ``image`` column and ``caption``/``captions`` (``|``-separated) columns;
- a folder of images with sidecar captions (``photo.jpg`` + ``photo.txt``: one caption a line);
- a folder of class sub-folders (``cats/*.jpg``, ``dogs/*.jpg``) for zero-shot classification,
  with an optional ``labels.json`` mapping folder names to label texts.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..imaging import image_extensions

__all__ = ["Pair", "load_pairs", "load_labelled", "split_pairs"]


@dataclass(frozen=True)
class Pair:
    image: Path
    captions: tuple[str, ...]
    label: str | None = None
    group: str | None = None  # items of one group (e.g. one object) stay on one side of a split
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def load_pairs(source: str | os.PathLike) -> list[Pair]:
    """Pairs from a manifest (.jsonl/.json lines, .csv) or a folder with sidecar .txt captions."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _sidecar_pairs(path)
    if not path.is_file():
        raise ConfigError(f"no such manifest or folder: {path}")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _jsonl_pairs(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_pairs(path)
    raise ConfigError(f"unsupported manifest {path.name}: use .jsonl or .csv, or a folder")


def _pair(base: Path, obj: dict, where: str) -> Pair:
    image = obj.get("image") or obj.get("path") or obj.get("file")
    if not image:
        raise ConfigError(f"{where}: no 'image' field")
    captions = obj.get("captions")
    if captions is None:
        captions = [obj["caption"]] if obj.get("caption") else []
    if isinstance(captions, str):
        captions = [c for c in captions.split("|")]
    captions = tuple(str(c).strip() for c in captions if str(c).strip())
    group = obj.get("group") or obj.get("object") or obj.get("product_id")
    label = obj.get("label")
    return Pair((base / str(image)).resolve(), captions, str(label) if label is not None else None,
                str(group) if group is not None else None)


def _jsonl_pairs(path: Path) -> list[Pair]:
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
            pairs.append(_pair(path.parent, obj, f"{path}:{n}"))
    return pairs


def _csv_pairs(path: Path) -> list[Pair]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        return [_pair(path.parent, row, f"{path}:{n}") for n, row in enumerate(reader, 2)]


def _sidecar_pairs(folder: Path) -> list[Pair]:
    exts = image_extensions()
    pairs = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file()):
        txt = image.with_suffix(".txt")
        captions = tuple(line.strip() for line in txt.read_text(encoding="utf-8").splitlines()
                         if line.strip()) if txt.is_file() else ()
        if captions:
            pairs.append(Pair(image.resolve(), captions, group=image.stem))
    return pairs


def load_labelled(source: str | os.PathLike) -> tuple[list[Pair], dict[str, str]]:
    """Labelled images and the label texts: a folder of class folders, or a manifest with ``label``.

    Returns (items, {label: text to put in prompts}); ``labels.json`` beside the data maps
    folder names to texts, otherwise underscores become spaces.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        exts = image_extensions()
        items = [Pair(p.resolve(), (), label=p.parent.name) for p in sorted(path.glob("*/*"))
                 if p.suffix.lower() in exts and p.is_file()]
        names_file = path / "labels.json"
    else:
        items = [p for p in load_pairs(path) if p.label is not None]
        names_file = path.parent / "labels.json"
    if not items:
        raise ConfigError(f"no labelled images in {path}")
    texts = json.loads(names_file.read_text(encoding="utf-8")) if names_file.is_file() else {}
    labels = sorted({p.label for p in items if p.label is not None})
    return items, {lab: texts.get(lab, lab.replace("_", " ")) for lab in labels}


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """A seeded split by group (by image when there is no group): no group on both sides."""
    if not 0 <= val_fraction < 1:
        raise ConfigError("the validation fraction must be in [0, 1)")
    groups = sorted({p.group or str(p.image) for p in pairs})
    random.Random(seed).shuffle(groups)
    n_val = round(len(groups) * val_fraction)
    val_groups = set(groups[:n_val])
    train = [p for p in pairs if (p.group or str(p.image)) not in val_groups]
    val = [p for p in pairs if (p.group or str(p.image)) in val_groups]
    return train, val
