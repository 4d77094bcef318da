"""Upcasting: older logs are converted in memory, step by step, when read; never rewritten in place.

An upcaster ``_vN_to_vN1(meta, fields)`` takes the root metadata dict and a dict of field arrays
as version N has them and returns both as version N+1 has them. ``UPCASTERS`` is keyed by the
version being upcast *from*. Version 1 is the first release, so there is nothing to upcast yet.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from moetape.schema.version import FORMAT_VERSION

Upcaster = Callable[[Dict[str, Any], Dict[str, Any]], Tuple[Dict[str, Any], Dict[str, Any]]]

UPCASTERS: Dict[int, Upcaster] = {}


def upcast(
    meta: Dict[str, Any], fields: Dict[str, Any], version: int
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Return (meta, fields) of a version-``version`` log as the current FORMAT_VERSION has them."""
    for v in range(version, FORMAT_VERSION):
        meta, fields = UPCASTERS[v](meta, fields)
    return meta, fields
