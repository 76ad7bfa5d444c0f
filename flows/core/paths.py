"""Dotted paths into JSON payloads (``data.video_id``, ``output.0``)."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def get_path(payload: Any, dotted: str) -> Any:
    """The value at ``dotted`` in ``payload``, or None when any step is missing.

    Numeric steps index lists (``output.0``); a step never raises, whatever
    the payload's shape, because payloads come from untrusted providers.
    """
    value = _lookup_path(payload, dotted)
    return None if value is _MISSING else value


def has_path(payload: Any, dotted: str) -> bool:
    """Whether ``dotted`` leads to a value (which may be null)."""
    return _lookup_path(payload, dotted) is not _MISSING


def _lookup_path(payload: Any, dotted: str) -> Any:
    current = payload
    for step in dotted.split("."):
        if isinstance(current, dict):
            if step not in current:
                return _MISSING
            current = current[step]
        elif isinstance(current, list) and step.lstrip("-").isdecimal() and step.isascii():
            index = int(step)
            if not -len(current) <= index < len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current
