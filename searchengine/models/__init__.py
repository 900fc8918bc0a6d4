"""Models behind narrow interfaces: ``encode_images`` / ``encode_texts``.

Nothing here loads weights at import; :func:`load_encoder` does, on demand.
"""

from .clip import ClipEncoder, load_encoder, parse_spec, select_device

__all__ = ["ClipEncoder", "load_encoder", "parse_spec", "select_device"]
