"""Content and text hashes: what the store keys images and texts by (pure, no SQL)."""

from __future__ import annotations

import hashlib

__all__ = ["content_hash", "text_hash"]


def content_hash(data: bytes) -> str:
    """What ``images.content_hash`` holds: BLAKE2b-128 of the file's bytes, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def text_hash(text: str) -> str:
    """What ``texts.text_hash`` holds: :func:`content_hash` of the text's UTF-8 bytes."""
    return content_hash(text.encode("utf-8"))
