"""The SQL metadata store (SQLAlchemy Core): the source of truth.

Every image row keeps its vector (float16), so the faiss index can always be rebuilt.
SQLite (WAL) by default, any SQLAlchemy URL otherwise. The schema (:mod:`.schema`) is
versioned by the numbered, frozen migrations of :mod:`.migrations`; :class:`Store` is
composed of one repository per table group (:mod:`.repos`).
"""

from ..hashing import content_hash, text_hash
from .codec import as_stored, pack_vectors, unpack_vectors
from .database import casefold
from .filtersql import IMAGE_FIELDS, PRODUCT_FIELDS, filter_condition
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .records import (
    Attributes,
    CollectionRecord,
    FileErrorRecord,
    ImageRecord,
    NewImage,
    ProductRecord,
    ProductWrite,
    TextRecord,
    VectorKind,
    file_type,
    number,
    outermost,
    value_text,
)
from .schema import (
    BigInt,
    attributes,
    collections,
    file_errors,
    generated,
    images,
    metadata,
    product_images,
    products,
    roots,
    schema_version,
    tags,
    texts,
)
from .store import Store

__all__ = [
    "Store", "CollectionRecord", "ImageRecord", "FileErrorRecord", "NewImage", "ProductWrite", "ProductRecord",
    "TextRecord", "Attributes", "SCHEMA_VERSION", "pack_vectors", "unpack_vectors", "content_hash", "text_hash",
]
#: Also here for the modules that import them from this path: the tables, the filter compiler,
#: value normalisation and the schema's version history.
__all__ += [
    "VectorKind", "as_stored", "outermost", "file_type", "number", "value_text", "casefold", "filter_condition",
    "IMAGE_FIELDS", "PRODUCT_FIELDS", "MIGRATIONS", "metadata", "BigInt", "schema_version", "collections", "images",
    "file_errors", "products", "product_images", "attributes", "texts", "generated", "tags", "roots",
]
