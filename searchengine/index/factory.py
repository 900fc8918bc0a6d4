"""The faiss factory string is configuration; this module is its policy: which strings are valid,
which faiss index each one builds (with SQL keys as ids), what ``auto`` chooses by collection size,
when an ``auto`` index is re-chosen, and which strings are built on disk (``ondisk:``).

``auto`` (the default) searches exactly (``Flat``) below :data:`AUTO_EXACT_LIMIT` vectors and uses an
inverted file over float16 vectors above it (``IVF{nlist},SQfp16``: lossless against the store,
which keeps float16) with about sqrt(n) lists, ``nprobe`` tuned to :data:`AUTO_TARGET_RECALL`.
Other strings: ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ32"``, ``"SQ8"``... (a leading
``IDMap2,`` is accepted and implied). Inverted files hold the ids themselves; every other type is
wrapped in ``IndexIDMap2`` (an ``IndexIDMap2`` around an inverted file cannot remove: faiss renumbers
its map but not the file, so the ids drift apart and the next removal aborts the process).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import BaseIndex, faiss_reason

__all__ = ["AUTO", "AUTO_EXACT_LIMIT", "AUTO_TARGET_RECALL", "ONDISK_PREFIX", "choose_factory", "nlist_for",
           "ivf_lists", "needs_rechoice", "normalize_factory", "is_ondisk", "base_factory", "make_index",
           "auto_exact_note"]

AUTO = "auto"
#: below this many vectors ``auto`` searches exactly (Flat: about 18 ms per query at 100k x 512 on 2 cores)
AUTO_EXACT_LIMIT = 100_000
#: recall@10 against exact search that ``auto`` tunes nprobe for (on held-out stored vectors)
AUTO_TARGET_RECALL = 0.97
#: the prefix of a factory string built on disk from the store (``ondisk:IVF65536,PQ32``)
ONDISK_PREFIX = "ondisk:"


def choose_factory(n: int) -> str:
    """The concrete factory ``auto`` uses for ``n`` vectors."""
    if n < AUTO_EXACT_LIMIT:
        return "Flat"
    return f"IVF{nlist_for(n)},SQfp16"


def auto_exact_note() -> str:
    """The note of an ``auto`` index that chose exact search."""
    return f"auto: exact Flat search below {AUTO_EXACT_LIMIT:,} vectors"


def nlist_for(n: int) -> int:
    """About sqrt(n) lists, a power of two: 1M vectors -> 1024 lists of ~1,000."""
    return int(2 ** round(np.log2(max(n, 1) ** 0.5)))


def ivf_lists(factory: str) -> int | None:
    """The list count of an ``IVF{n},...`` factory string, or None."""
    match = re.match(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def needs_rechoice(index: BaseIndex) -> bool:
    """Whether an ``auto`` index no longer fits its size, with hysteresis so a collection that hovers
    near a boundary is not rebuilt on every change: exact search grows into an inverted file at
    :data:`AUTO_EXACT_LIMIT` vectors but goes back only below half of it, and an inverted file is
    retrained when sqrt(n) is more than 2x away from its lists (the size moved 4x)."""
    if index.factory != AUTO or index.untrained_fallback:
        return False  # an untrained fallback is rebuilt by the writer when vectors are added
    n, have = index.ntotal, index.chosen
    if have == "Flat":
        return n >= AUTO_EXACT_LIMIT
    if n < AUTO_EXACT_LIMIT // 2:
        return True
    nlist = ivf_lists(have)
    return nlist is None or not 0.5 <= max(n, 1) ** 0.5 / nlist <= 2


def normalize_factory(factory: str) -> str:
    """The inner factory string: whitespace and a leading ``IDMap,``/``IDMap2,`` removed."""
    text = factory.replace(" ", "")
    for prefix in ("IDMap2,", "IDMap,"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if not text:
        raise ConfigError("empty index factory string")
    return text


def is_ondisk(factory: str) -> bool:
    """Whether a factory string is built on disk from the store (``ondisk:`` prefix)."""
    return factory.replace(" ", "").startswith(ONDISK_PREFIX)


def base_factory(factory: str) -> str:
    """The faiss factory of an ``ondisk:`` string, checked to build an inverted file."""
    import faiss

    text = factory.replace(" ", "")
    text = text[len(ONDISK_PREFIX):] if text.startswith(ONDISK_PREFIX) else text
    try:
        probe = faiss.index_factory(8 if "PQ" not in text else 64, text, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"invalid faiss index factory {text!r}: {faiss_reason(exc)}") from exc
    if not isinstance(probe, faiss.IndexIVF) or isinstance(probe, faiss.IndexIVFPQR):
        raise ConfigError(f"an on-disk index must be an inverted file such as IVF65536,PQ32, not {text!r}")
    return text


def make_index(factory: str, dim: int) -> Any:
    """The empty faiss index (inner product) a factory string builds, its ids the SQL keys: an
    inverted file keeps them itself, any other type is wrapped in ``IndexIDMap2``. ``auto`` and an
    ``ondisk:`` string (checked here) give an exact ``Flat`` index until there are vectors to choose
    or build from."""
    import faiss

    if normalize_factory(factory) == AUTO:
        factory = "Flat"  # an empty auto index; the build chooses by size
    if is_ondisk(factory):
        base_factory(factory)  # checked here; the on-disk build makes it from the store
        factory = "Flat"  # searched exactly until there are vectors to build it on disk from
    try:
        inner = faiss.index_factory(dim, normalize_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"invalid faiss index factory {factory!r}: {faiss_reason(exc)}") from exc
    if isinstance(inner, faiss.IndexIVF):  # index_factory returns the concrete type
        return inner  # keeps the ids itself (see the module docstring)
    return faiss.IndexIDMap2(inner)
