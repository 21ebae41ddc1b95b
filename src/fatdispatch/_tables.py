"""The package's data tables, read once: the CPU feature vocabulary (``_data/cpu_features.json``), the one copy,
also compiled into the primitives' decoder (``build_tools/gen_cpu_table.py``)."""

import os

from ._manifest import read_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_TABLE_PATH = os.path.join(os.path.dirname(__file__), "_data", "cpu_features.json")
_table: "dict[str, Any] | None" = None


def feature_table() -> "dict[str, Any]":
    """The CPU feature vocabulary: x86 CPUID bits, XCR0 state groups, levels; aarch64 HWCAP bits, versions."""
    global _table
    if _table is None:
        _table = read_json(_TABLE_PATH)
    return _table
