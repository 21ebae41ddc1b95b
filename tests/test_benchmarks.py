"""The benchmark suite runs end to end on a tiny size (benchmarks are not timed tests: nothing here checks speed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run

pytestmark = pytest.mark.slow


def test_run_all_tiny(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--tiny", "--out", str(out)])
    r = json.loads(out.read_text())
    assert {"import", "probe", "calls", "pick", "build", "gpu"} <= set(r)
    assert r["import"]["fat_median_s"] > 0 and r["calls"]["module_is_the_extension"] is True
    # the warm cases are answered by the pick cache, every time; the full-path cases never are
    runs, hits = r["import"]["runs"], r["import"]["hits"]
    assert hits == {"hit": runs, "runtime_dir": runs, "own_tmp": runs, "first": 0, "unwritable": 0}, hits
    assert r["pick"]["auto_pick"] in r["pick"]["builds"]
    assert all(d.get("cold_median_s", 0) > 0 for d in r["probe"].values()), r["probe"]  # every contender ran
    assert "import fatdemo" in p.stdout and "Kernel throughput" in p.stdout


def test_import_split_tiny(tmp_path: Path) -> None:
    """The step-by-step split of a warm import runs, with the pick cache answering, and times every step."""
    p = run([sys.executable, str(ROOT / "benchmarks" / "import_split.py"), "--tiny", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-split.json")
    r = json.loads(out.read_text())
    assert r["hit"] is True and r["runs"] == 3
    fat, plain = r["median_us"]["fatdemo"], r["median_us"]["fatdemo_plain"]
    assert fat["import _fatdispatch"] > 0 and fat["from . import _core"] > 0 and plain["from . import _core"] > 0
    assert plain["import _fatdispatch"] == plain["install(...)"] == 0  # the twin has no wiring line
    assert "pick cache answered: True" in p.stdout


def test_first_split_tiny(tmp_path: Path) -> None:
    """The split of a first import runs: every import it times decided afresh (none answered by the pick cache),
    the full path's modules found and timed, and every step of the work after them timed in both cache homes."""
    p = run([sys.executable, str(ROOT / "benchmarks" / "first_split.py"), "--tiny", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-first.json")
    r = json.loads(out.read_text())
    assert r["runs"] == 3 and {"fatdispatch._load", "fatdispatch._select", "fatdispatch._manifest"} <= set(r["modules"])
    m = r["median_us"]
    assert all(m[f"module {name} (-X importtime, own)"] > 0 for name in r["modules"])
    for home in ("new cache home", "cache folders exist"):
        assert all(m[f"{home}: {step}"] > 0 for step in ("read_manifest", "select", "remember", "load_extension"))
    assert m["first: import fatdemo"] > m["cache folders exist: import fatdemo"] > 0
    assert "added by the first import over the twin" in p.stdout
