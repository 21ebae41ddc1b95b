"""cffi integration: an out-of-line API-mode cffi module built as variants.

cffi bakes the ``set_source`` module name into the generated C (its init
function is ``PyInit_<name>``), which is exactly what dispatch needs: every
variant is compiled from the same generated source under the same name, each
with its own flags and object folder.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ._setuptools import FatExtension


def cffi_extension(ffibuilder: Any, *, tmpdir: str = "build/fatdispatch-cffi", variants: Sequence[str] | None = None,
                   **kwargs: Any) -> FatExtension:
    """A :class:`FatExtension` for a ``cffi.FFI`` on which ``set_source(name, source, ...)`` was called.

    The C code is generated now (``ffibuilder.emit_c_code``); the extension's
    sources, include dirs, libraries and macros come from ``set_source``'s
    keywords, extended by ``kwargs``.
    """
    assigned = getattr(ffibuilder, "_assigned_source", None)
    if assigned is None:
        raise ValueError("call ffibuilder.set_source(module_name, source, ...) before cffi_extension()")
    module_name, _source, _source_extension, kwds = assigned
    os.makedirs(tmpdir, exist_ok=True)
    c_file = os.path.join(tmpdir, module_name.replace(".", "_") + ".c")
    ffibuilder.emit_c_code(c_file)
    sources = [c_file] + list(kwds.get("sources", []))
    merged: dict[str, Any] = {k: list(v) for k, v in kwds.items() if k != "sources" and isinstance(v, (list, tuple))}
    for key, value in kwargs.items():
        if isinstance(value, (list, tuple)) and key in merged:
            merged[key] = merged[key] + list(value)
        else:
            merged[key] = value
    return FatExtension(module_name, sources, variants=variants, **merged)
