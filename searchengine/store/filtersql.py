"""The filter compiler: a parsed filter expression (:mod:`searchengine.filters`) as a SQL
condition on the ``images`` table."""

from __future__ import annotations

import os

from sqlalchemy import and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ..errors import QueryError
from ..filters import And, Compare, In, Node, Not, Or
from .database import casefold
from .records import file_type, value_text
from .schema import attributes, images, product_images, products, tags

__all__ = ["filter_condition", "IMAGE_FIELDS", "PRODUCT_FIELDS"]

#: Filter fields stored on the image row; any other field is an attribute (of the image or its product).
IMAGE_FIELDS = {"path": "path", "type": "ext", "ext": "ext", "taken": "taken_at", "date": "taken_at",
                "caption": "caption", "text": "ocr_text", "width": "width", "height": "height", "size": "size"}
PRODUCT_FIELDS = {"product": "product_key", "product_id": "product_key", "title": "title",
                  "description": "description"}
_NUMERIC = {"width", "height", "size"}


def filter_condition(node: Node) -> ColumnElement:
    """A filter expression (:mod:`searchengine.filters`) as a SQL condition on the ``images`` table.

    Same semantics as :func:`searchengine.filters.evaluate` for attributes: a field matches when
    any of its values does; strings compare casefolded; ``!=`` is ``not =``. The built-in fields
    have a type: ``folder = X`` means "under X"; the text ones (path, type, taken, caption, text,
    product, title, description) take a number in its text form (``taken >= 2021``), and
    ``type = jpeg`` means jpg as the store records it.
    """
    if isinstance(node, And):
        return and_(*(filter_condition(n) for n in node.items))
    if isinstance(node, Or):
        return or_(*(filter_condition(n) for n in node.items))
    if isinstance(node, Not):
        return ~filter_condition(node.item)
    if isinstance(node, In):
        return or_(*(filter_condition(Compare(node.field, "=", v)) for v in node.values))
    assert isinstance(node, Compare)
    if node.op == "!=":
        return ~filter_condition(Compare(node.field, "=", node.value))
    return _field_condition(node, node.field.casefold())


def _field_condition(node: Compare, field_name: str) -> ColumnElement:
    """``field op value`` for one field: a built-in column, a product's, a tag or an attribute."""
    if field_name == "folder":
        if node.op != "=":
            raise QueryError("folder takes = (under that folder) or != (not under it)")
        root = os.path.abspath(os.path.expanduser(value_text(node.value))).rstrip("/")
        return or_(images.c.path == root, func.substr(images.c.path, 1, len(root) + 1) == root + "/")
    if field_name in IMAGE_FIELDS:
        column = images.c[IMAGE_FIELDS[field_name]]
        if field_name in _NUMERIC:
            if not isinstance(node.value, float) or node.op == "~":
                raise QueryError(f"{field_name} is a number: compare it with <, <=, =, >=, > and a number")
            return and_(column.is_not(None), _compare(column, node.op, node.value))
        value = _norm(node.value)
        if field_name in ("type", "ext") and node.op == "=":
            value = file_type("x." + value)  # jpeg means jpg, as stored
        return and_(column.is_not(None), _compare(casefold(column), node.op, value))
    if field_name in PRODUCT_FIELDS:
        column = products.c[PRODUCT_FIELDS[field_name]]
        cond = and_(column.is_not(None), _compare(casefold(column), node.op, _norm(node.value)))
        return images.c.id.in_(select(product_images.c.image_id).join(
            products, products.c.id == product_images.c.product_id).where(cond, product_images.c.image_id.is_not(None)))
    if field_name == "tag" and not (isinstance(node.value, float) and node.op != "~"):
        tagged = select(tags.c.id).where(tags.c.image_id == images.c.id,
                                         _compare(tags.c.label_norm, node.op, _norm(node.value))).correlate(images)
        return or_(tagged.exists(), _attribute_condition(node, field_name))
    return _attribute_condition(node, field_name)


def _attribute_condition(node: Compare, field_name: str) -> ColumnElement:
    owned = or_(attributes.c.image_id == images.c.id, attributes.c.product_id.in_(
        select(product_images.c.product_id).where(product_images.c.image_id == images.c.id).correlate(images)))
    if isinstance(node.value, float) and node.op != "~":
        cond = _compare(attributes.c.value_num, node.op, node.value)
    else:
        cond = _compare(attributes.c.value_norm, node.op, _norm(node.value))
    return select(attributes.c.id).where(attributes.c.key == field_name, cond, owned).correlate(images).exists()


def _norm(value: object) -> str:
    return value_text(value).casefold().strip()


def _compare(column, op: str, value: object) -> ColumnElement:
    if op == "~":
        escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(f"%{escaped}%", escape="\\")
    return {"=": column == value, "<": column < value, "<=": column <= value,
            ">": column > value, ">=": column >= value}[op]
