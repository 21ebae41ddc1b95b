"""Read small JSON files without importing :mod:`json`.

``import json`` pulls in :mod:`re` and costs over a millisecond in a fresh
interpreter.  The C scanner behind it (``_json.make_scanner``) is all a strict
reader needs, so the import path uses it directly and falls back to :mod:`json`
where the accelerator is missing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)


try:
    import _json as _accel

    _scan = _accel.make_scanner(_Context())
except (ImportError, AttributeError):  # pragma: no cover - CPython always has it
    _scan = None


class JSONError(ValueError):
    """The text is not one valid JSON document."""


def loads(text: str) -> Any:
    """Parse ``text`` strictly: one JSON value, no NaN/Infinity, nothing after it."""
    if _scan is None:  # pragma: no cover
        import json

        try:
            return json.loads(text, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise JSONError(str(exc)) from None
    start = 0
    length = len(text)
    while start < length and text[start] in _WHITESPACE:
        start += 1
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise JSONError(f"invalid JSON at character {exc.value}") from None
    except (ValueError, RecursionError) as exc:
        raise JSONError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    while end < length and text[end] in _WHITESPACE:
        end += 1
    if end != length:
        raise JSONError(f"extra data after the JSON value at character {end}")
    return value


def read(path: str, limit: int = 1 << 20) -> Any:
    """Read and parse a UTF-8 JSON file no larger than ``limit`` bytes.

    Raises :class:`OSError` for I/O problems and :class:`JSONError` for bad content.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise JSONError(f"file is larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    return loads(text)
