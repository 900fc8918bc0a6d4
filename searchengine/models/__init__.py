"""Models behind narrow interfaces: ``encode_images`` / ``encode_texts``, ``rank``, ``generate``.

:mod:`.registry` holds the one spec grammar, the presets and each family's loader; nothing here
loads weights at import: :func:`load_encoder` does, on demand.
"""

from .clip import ClipEncoder, load_encoder
from .device import select_device
from .registry import canonical_spec, parse_spec

__all__ = ["ClipEncoder", "load_encoder", "parse_spec", "select_device", "canonical_spec"]
