"""Text tokenizers for the query path: HF ``tokenizers`` (Rust) and numpy, no torch.

This module owns turning query texts into the token arrays a text tower takes, without
importing torch, open_clip or transformers:

* :class:`ClipBpeTokenizer`: open_clip's ``SimpleTokenizer`` (the default ViT-B-32 and every
  open_clip model without an HF tokenizer), built once from the model's own BPE vocabulary
  (``bpe_simple_vocab_16e6.txt.gz``, see :func:`open_clip_vocab_path`). Equal, id for id, to
  ``open_clip.tokenize(texts, context_length).numpy()``: the same cleaning (ftfy, HTML
  unescaping twice, whitespace collapsing, lowercasing), CLIP's split pattern, the byte-to-unicode
  map, BPE with ``</w>`` word ends, ``<start_of_text>``/``<end_of_text>``, zero padding, and
  truncation that keeps the first tokens and puts ``<end_of_text>`` last.
* :class:`WordPieceTokenizer`: the lite model's MiniLM tokenizer, what ``lite.LiteTokenizer``
  gets from transformers (padding to the longest text, truncation at the context length).

``save(folder)`` writes the vocabulary (``merges.txt`` for CLIP, ``tokenizer.json`` for WordPiece)
plus :data:`SETTINGS` (a small JSON of settings); ``load(folder)`` / :func:`load_tokenizer` read
them back, so a query needs neither open_clip, transformers nor the gz file. ftfy (about 0.1 s
to import) is imported only for a text it could change: one that is not plain printable ASCII
without ``&`` (on such text ftfy and HTML unescaping are no-ops).
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, pre_tokenizers

from ..errors import ModelLoadError

__all__ = ["ClipBpeTokenizer", "WordPieceTokenizer", "load_tokenizer", "open_clip_vocab_path",
           "clip_clean", "SETTINGS", "CLIP_VOCAB_FILE"]

#: The settings file ``save`` writes beside the vocabulary.
SETTINGS = "searchengine_tokenizer.json"
#: open_clip's BPE vocabulary, inside the installed open_clip package.
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_FORMAT = 1
_SOT, _EOT = "<start_of_text>", "<end_of_text>"
#: open_clip's split pattern (its special tokens first); applied to lowercased text
_CLIP_PATTERN = "|".join([_SOT, _EOT, r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"])
_N_MERGES = 49152 - 256 - 2  # the merges open_clip reads: lines 1 .. 48894 of the vocabulary file
#: a character ftfy.fix_text or html.unescape might change: anything but printable ASCII, tab, newline, or '&'
_NOT_PLAIN = re.compile(r"[^\t\n -%'-~]")


def open_clip_vocab_path() -> Path:
    """The ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip, found without importing it."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ModelLoadError("open_clip is not installed: its BPE vocabulary is needed to build the tokenizer")
    path = Path(spec.origin).parent / CLIP_VOCAB_FILE
    if not path.is_file():
        raise ModelLoadError(f"open_clip's BPE vocabulary {path} is missing; reinstall open_clip_torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map, in CLIP's order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_clean(text: str) -> str:
    """open_clip's ``lower`` cleaning: ftfy, HTML unescaping twice, whitespace collapsed, lowercased."""
    if _NOT_PLAIN.search(text) is not None:
        import ftfy  # about 0.1 s; plain ASCII without '&' needs neither ftfy nor unescaping

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _read_settings(folder: Path, kind: str) -> dict:
    try:
        settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the tokenizer settings in {folder}: {exc}") from exc
    if not isinstance(settings, dict) or settings.get("kind") != kind or settings.get("format") != _FORMAT:
        raise ModelLoadError(f"{folder / SETTINGS} is not a {kind} tokenizer (format {_FORMAT})")
    return settings


def _write_settings(folder: Path, settings: dict) -> None:
    (folder / SETTINGS).write_text(json.dumps({"format": _FORMAT, **settings}, indent=2) + "\n", encoding="utf-8")


def _clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """CLIP's split pattern (matches kept, spaces dropped), then each UTF-8 byte mapped to its character."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


class ClipBpeTokenizer:
    """texts -> ``(n, context_length)`` int64 ids, equal to ``open_clip.tokenize(texts, context_length)``.

    The split and the byte mapping run in ``tokenizers``; the BPE merges run here, in Python, with a
    cache per word: a ``tokenizers`` BPE model of the same vocabulary took 0.13-0.27 s to load from its
    ``tokenizer.json`` on the 2-core test machine, the one dict this needs 0.015-0.03 s. Ids
    follow open_clip's vocabulary: the 256 byte characters, the same with ``</w>``, then one token per
    merge in rank order (so a merge's token id is ``512 + rank``), then the two special tokens.
    """

    kind = "clip-bpe"
    MERGES = "merges.txt"

    def __init__(self, merges: Sequence[str], context_length: int = 77) -> None:
        if context_length < 2:
            raise ModelLoadError(f"context_length must be at least 2, not {context_length}")
        self.merges = list(merges)  # "a b" per merge, by rank
        self._ranks = dict(zip(self.merges, range(len(self.merges))))
        if len(self._ranks) != len(self.merges):
            raise ModelLoadError("the BPE merges repeat a merge")
        self._base = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
        self.context_length = context_length
        self.sot_id = 2 * len(self._base) + len(self.merges)
        self.eot_id = self.sot_id + 1
        self._pre = _clip_pre_tokenizer()
        self._cache: dict[str, list[int]] = {_SOT: [self.sot_id], _EOT: [self.eot_id]}

    @classmethod
    def from_vocab(cls, path: Path, context_length: int = 77) -> "ClipBpeTokenizer":
        """Build from open_clip's gzipped BPE file (a header line, then one ``a b`` merge a line)."""
        import gzip

        try:
            merges = gzip.open(path).read().decode("utf-8").split("\n")[1:_N_MERGES + 1]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read the BPE vocabulary {path}: {exc}") from exc
        if len(merges) != _N_MERGES or any(len(m.split(" ")) != 2 or "" in m.split(" ") for m in merges):
            raise ModelLoadError(f"{path} does not hold {_N_MERGES} BPE merges")
        chars = list(_bytes_to_unicode().values())
        tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges), _SOT, _EOT]
        if len(set(tokens)) != len(tokens):  # open_clip's ids would then skip the repeats: not supported
            raise ModelLoadError(f"{path}: two merges make the same token")
        return cls(merges, context_length)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.MERGES).write_text("\n".join(self.merges), encoding="utf-8")
        _write_settings(folder, {"kind": self.kind, "context_length": self.context_length,
                                 "merges": len(self.merges)})
        return folder

    @classmethod
    def load(cls, folder: Path) -> "ClipBpeTokenizer":
        folder = Path(folder)
        settings = _read_settings(folder, cls.kind)
        try:
            merges = (folder / cls.MERGES).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read {folder / cls.MERGES}: {exc}") from exc
        if len(merges) != settings.get("merges"):
            raise ModelLoadError(f"{folder / cls.MERGES} holds {len(merges)} merges, not {settings.get('merges')}")
        return cls(merges, int(settings["context_length"]))

    def _word(self, piece: str) -> list[int]:
        """One pre-token's ids: merge the best-ranked adjacent pair everywhere, until no pair is a merge."""
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        ranks, base = self._ranks, self._base
        syms = list(piece)
        syms[-1] += "</w>"
        ids = [base[c] for c in piece]
        ids[-1] += len(base)
        while len(syms) > 1:
            best, best_rank = -1, 0
            for i in range(len(syms) - 1):
                rank = ranks.get(f"{syms[i]} {syms[i + 1]}")
                if rank is not None and (best < 0 or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            first, second, new_id = syms[best], syms[best + 1], 2 * len(base) + best_rank
            new_syms: list[str] = syms[:best]
            new_ids: list[int] = ids[:best]
            i = best
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == first and syms[i + 1] == second:
                    new_syms.append(first + second)
                    new_ids.append(new_id)
                    i += 2
                else:
                    new_syms.append(syms[i])
                    new_ids.append(ids[i])
                    i += 1
            syms, ids = new_syms, new_ids
        if len(self._cache) > 100_000:  # bounded for long-running processes
            self._cache = {_SOT: [self.sot_id], _EOT: [self.eot_id]}
        self._cache[piece] = ids
        return ids

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's BPE ids after cleaning, without the start/end tokens and not truncated."""
        return [[i for piece, _ in self._pre.pre_tokenize_str(clip_clean(text)) for i in self._word(piece)]
                for text in texts]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length
        result = np.zeros((len(texts), length), dtype=np.int64)
        for row, ids in enumerate(self.encode(texts)):
            tokens = [self.sot_id, *ids[:length - 2], self.eot_id]  # truncated: first tokens kept, eot last
            result[row, :len(tokens)] = tokens
        return result


class WordPieceTokenizer:
    """texts -> ``{"input_ids", "attention_mask"}`` int64 ``(n, L)``: what lite's text tower is fed.

    ``L`` is the longest text's length (``[CLS] ... [SEP]``), at most ``context_length``; rows are padded
    with the pad id (0). The mask is ``input_ids != pad_id``, as ``LiteCLIP.text_states`` computes it.
    """

    kind = "wordpiece"

    def __init__(self, tokenizer: Tokenizer, context_length: int, pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id

    @classmethod
    def from_hf_folder(cls, path: Path, context_length: int = 64) -> "WordPieceTokenizer":
        """From an HF tokenizer folder's ``tokenizer.json`` (lite: ``backbones.minilm_dir()``, and
        ``LiteConfig.context_length``), set to pad to the longest text and truncate at ``context_length``."""
        path = Path(path)
        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            smap = path / "special_tokens_map.json"
            pad = json.loads(smap.read_text(encoding="utf-8")).get("pad_token", "[PAD]") if smap.is_file() else "[PAD]"
        except Exception as exc:  # OSError, JSON errors, and tokenizers' bare Exception on a bad file
            raise ModelLoadError(f"cannot read the tokenizer in {path}: {exc}") from exc
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ModelLoadError(f"the tokenizer in {path} has no pad token {pad!r}")
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=context_length, stride=0, strategy="longest_first", direction="right")
        tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad)
        return cls(tokenizer, context_length, pad_id)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        _write_settings(folder, {"kind": self.kind, "context_length": self.context_length, "pad_id": self.pad_id})
        return folder

    @classmethod
    def load(cls, folder: Path) -> "WordPieceTokenizer":
        folder = Path(folder)
        settings = _read_settings(folder, cls.kind)
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # OSError, or tokenizers' bare Exception on a bad file
            raise ModelLoadError(f"cannot read the tokenizer in {folder}: {exc}") from exc
        return cls(tokenizer, int(settings["context_length"]), int(settings["pad_id"]))

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
        ids = np.array([e.ids for e in encodings], dtype=np.int64) if encodings else np.zeros((0, 0), np.int64)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).astype(np.int64)}


def load_tokenizer(folder: Path) -> ClipBpeTokenizer | WordPieceTokenizer:
    """Whichever tokenizer ``save`` wrote into ``folder``."""
    try:
        settings = json.loads((Path(folder) / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the tokenizer settings in {folder}: {exc}") from exc
    kind = settings.get("kind") if isinstance(settings, dict) else None
    for cls in (ClipBpeTokenizer, WordPieceTokenizer):
        if kind == cls.kind:
            return cls.load(folder)
    raise ModelLoadError(f"{Path(folder) / SETTINGS} names an unknown tokenizer kind {kind!r}")
