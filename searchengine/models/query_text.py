"""The text tower of a collection's model for the query path, without torch: an ONNX export of the
tower (:mod:`.onnx_export`, verified against torch) and the model's tokenizer rebuilt on
``tokenizers`` (:mod:`.tokenize`, checked token for token), kept in the collection's folder.

:func:`export_query_text` runs on the torch side (``searchengine export-model``); :class:`OnnxTextEncoder`
loads in a fraction of a second with numpy and onnxruntime alone. Models whose tokenizer is not
open_clip's default BPE (or lite's WordPiece) are not exported: their queries stay on torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ModelLoadError
from .backbones import minilm_dir
from .onnx_runtime import OnnxTower, read_meta
from .tokenize import ClipBpeTokenizer, WordPieceTokenizer, load_tokenizer, open_clip_vocab_path

if TYPE_CHECKING:  # pragma: no cover
    from .clip import ClipEncoder

__all__ = ["OnnxTextEncoder", "export_query_text", "QUERY_MODEL_DIR", "TOWERS_DIR", "TOKENIZER_DIR"]

log = logging.getLogger(__name__)

#: inside a collection's folder: the exported towers and the tokenizer
QUERY_MODEL_DIR = "query-model"
TOWERS_DIR = "towers"
TOKENIZER_DIR = "tokenizer"
_CHECK_TEXTS = ("a photo of a dog on a beach", "Red SPORTS car!", "un café à Paris", "a" * 400, "",
                "two  spaces\tand a tab", "it's the cat's toy", "3 apples & 2 pears")


@dataclass(frozen=True)
class OnnxTextEncoder:
    """``encode_texts`` of a collection's model from its exported text tower (no torch)."""

    tower: OnnxTower
    tokenizer: Any
    spec: str

    @classmethod
    def load(cls, folder: Path, fingerprint: str, dim: int) -> "OnnxTextEncoder":
        """The export in ``folder`` (a collection's ``query-model``) if it is complete and of the model
        with ``fingerprint``; :class:`ModelLoadError` otherwise."""
        towers = folder / TOWERS_DIR
        if not (towers / "meta.json").is_file() or not (folder / TOKENIZER_DIR).is_dir():
            raise ModelLoadError(f"no exported text tower in {folder} (run `searchengine export-model`)")
        tower = OnnxTower.load(towers, "text", fingerprint=fingerprint, dim=dim, prepack=False)
        return cls(tower, load_tokenizer(folder / TOKENIZER_DIR), str(tower.meta.get("spec", "")))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(n, d)``, L2-normalised, as the torch encoder gives them."""
        if len(texts) == 0:
            return np.zeros((0, self.tower.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts))
        if isinstance(tokens, dict):
            return self.tower.encode_tokens(tokens["input_ids"], tokens["attention_mask"])
        return self.tower.encode_tokens(tokens)


def _tokenizer_for(encoder: "ClipEncoder") -> ClipBpeTokenizer | WordPieceTokenizer:
    """The torch-free twin of ``encoder``'s tokenizer, or ModelLoadError when it has none."""
    tok = encoder.tokenizer
    kind = type(tok).__name__
    if kind == "SimpleTokenizer" and getattr(tok, "reduction_fn", None) is None:
        return ClipBpeTokenizer.from_vocab(open_clip_vocab_path(), context_length=int(tok.context_length))
    if kind == "LiteTokenizer":
        return WordPieceTokenizer.from_hf_folder(minilm_dir(), context_length=int(tok.context_length))
    raise ModelLoadError(f"the tokenizer of {encoder.spec!r} ({kind}) has no torch-free twin; queries stay on torch")


def _check_tokenizer(twin: Any, encoder: "ClipEncoder") -> None:
    ours = twin(list(_CHECK_TEXTS))
    ours = ours["input_ids"] if isinstance(ours, dict) else ours
    theirs = encoder.tokenizer(list(_CHECK_TEXTS)).numpy()
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        raise ModelLoadError(f"the torch-free tokenizer of {encoder.spec!r} does not match the model's own")


def export_query_text(encoder: "ClipEncoder", folder: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Export ``encoder``'s text tower and tokenizer into ``folder`` (a collection's ``query-model``);
    both are checked against torch first. Returns the export's meta. ``encoder`` must be fp32;
    ``fingerprint``: the collection's fingerprint id its probe was matched with."""
    from .onnx_export import export_towers

    twin = _tokenizer_for(encoder)
    _check_tokenizer(twin, encoder)
    folder.mkdir(parents=True, exist_ok=True)
    twin.save(folder / TOKENIZER_DIR)
    export_towers(encoder, folder / TOWERS_DIR, towers=("text",), fingerprint=fingerprint)
    return read_meta(folder / TOWERS_DIR)
