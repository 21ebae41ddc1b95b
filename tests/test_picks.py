"""The pick cache: a later import reuses an earlier process's decision only while everything it rests on holds.

Each test gets its own cache folder and its own copy of the installed example, so that what it checks (hit or
miss, which build) is not decided by another test's run.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from conftest import qemu, run, site_packages

pytestmark = pytest.mark.slow

STATE = """
import json, sys, fatdemo, fatdispatch
hit = "fatdispatch._runtime" not in sys.modules
rec = fatdispatch.loaded("fatdemo._core")
print(json.dumps({"variant": fatdemo.variant(), "hit": hit, "record": rec.variant, "attempts": list(rec.attempts),
                  "ok": fatdemo.hamming(b"\\x0f" * 64, b"\\xf0" * 64) == 512,
                  "chosen": rec.selection.chosen}))
"""


@pytest.fixture
def setup(demo_venv: Path, clean_env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """(environment, the copy's variants folder, its pick cache file) for a private copy of fatdemo."""
    site = tmp_path / "site"
    shutil.copytree(site_packages(demo_venv) / "fatdemo", site / "fatdemo")
    env = dict(clean_env, PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "cache"))
    variants = site / "fatdemo" / "_core.variants"
    st = variants.stat()
    return env, variants, tmp_path / "cache" / "fatdispatch" / "picks-v2" / f"{st.st_dev:x}-{st.st_ino:x}.json"


def state(py: Path, env: dict[str, str], *args: str) -> dict:
    return json.loads(run([*args, str(py), "-c", STATE], env=env, cwd="/").stdout)


def best(py: Path, env: dict[str, str]) -> str:
    env = dict(env, FATDISPATCH_CACHE="0")
    return str(json.loads(run([str(py), "-c", STATE], env=env, cwd="/").stdout)["variant"])


def test_second_import_is_answered_by_the_cache(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    env, variants, cache = setup
    first = state(demo_venv, env)
    assert not first["hit"] and first["ok"]
    entry = json.loads(cache.read_text())
    assert entry["variants"] == str(variants)
    so = variants / first["variant"] / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert entry["build"] == first["variant"] and entry["path"] == str(so)
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    second = state(demo_venv, env)
    assert second["hit"] and second["ok"] and second["variant"] == first["variant"]
    # loaded() rebuilds the full record on demand: the same decision, with every build's reason
    assert second["record"] == second["chosen"] == first["variant"] and second["attempts"] == []


def test_any_fatdispatch_variable_bypasses_the_cache(demo_venv: Path,
                                                     setup: tuple[dict[str, str], Path, Path]) -> None:
    env, _, _ = setup
    assert state(demo_venv, env)["variant"] != "baseline"
    assert state(demo_venv, env)["hit"]
    forced = state(demo_venv, dict(env, FATDISPATCH_FORCE="baseline"))
    assert forced["variant"] == "baseline" and not forced["hit"]
    assert not state(demo_venv, dict(env, FATDISPATCH_CACHE="0"))["hit"]
    assert state(demo_venv, env)["hit"]  # a forced run does not overwrite the cached pick


def test_changed_manifest_misses(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    env, variants, _ = setup
    state(demo_venv, env)
    assert state(demo_venv, env)["hit"]
    manifest = variants / "manifest.json"
    st = manifest.stat()
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not state(demo_venv, env)["hit"]
    assert state(demo_venv, env)["hit"]


def test_untrusted_or_corrupt_cache_is_ignored(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    env, variants, cache = setup
    state(demo_venv, env)
    cache.chmod(0o666)  # another user could have written it
    assert not state(demo_venv, env)["hit"]
    cache.chmod(0o600)
    entry = json.loads(cache.read_text())
    for path in (f"{variants}/../../evil/_core.so", "/usr/lib/x86_64-linux-gnu/libc.so.6", 42):
        entry["path"] = path
        cache.write_text(json.dumps(entry))
        cache.chmod(0o600)
        after = state(demo_venv, env)
        assert not after["hit"] and after["ok"], path
    entry["path"] = str(variants / "x86-64-v2" / "_core.so")
    entry["variants"] = str(variants.parent / "other.variants")  # another folder's entry (a reused inode)
    cache.write_text(json.dumps(entry))
    cache.chmod(0o600)
    assert not state(demo_venv, env)["hit"]
    cache.write_bytes(b"\x00garbage{")
    after = state(demo_venv, env)
    assert not after["hit"] and after["ok"]
    assert state(demo_venv, env)["hit"]  # rewritten


def test_cache_keeps_one_small_file_per_folder_and_prunes_the_oldest(tmp_path: Path) -> None:
    from fatdispatch._slowpath import prune_picks, write_private_json

    folder = tmp_path / "cache" / "fatdispatch" / "picks-v2"
    for i in range(70):
        write_private_json(str(folder / f"{i:x}-1.json"), {"n": i})
        os.utime(folder / f"{i:x}-1.json", ns=(i * 10**9, i * 10**9))
    assert oct(folder.stat().st_mode & 0o777) == oct(folder.parent.stat().st_mode & 0o777) == "0o700"
    prune_picks(str(folder), keep=64)
    left = sorted(json.loads(p.read_text())["n"] for p in folder.iterdir())
    assert left == list(range(6, 70))  # the 64 most recently written


def test_a_replaced_build_file_is_not_trusted(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    """The cached file is loaded again only while its (mtime, size, inode, device) are those that loaded: a
    replaced file goes through the full path and its ELF check first."""
    env, variants, _ = setup
    first = state(demo_venv, env)["variant"]
    so = variants / first / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    data = so.read_bytes()
    so.unlink()
    so.write_bytes(data)  # same content, new inode
    again = state(demo_venv, env)
    assert not again["hit"] and again["variant"] == first and again["attempts"] == []
    assert state(demo_venv, env)["hit"]


def test_broken_cached_build_falls_back_and_is_forgotten(demo_venv: Path,
                                                          setup: tuple[dict[str, str], Path, Path]) -> None:
    env, variants, cache = setup
    first = state(demo_venv, env)["variant"]
    if first == "baseline":
        pytest.skip("needs a CPU above baseline")
    so = variants / first / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    so.write_bytes(so.read_bytes()[:4096])  # truncated after the pick was cached
    out = run([str(demo_venv), "-W", "ignore", "-c", STATE], env=env, cwd="/")
    after = json.loads(out.stdout)
    assert after["variant"] != first and after["ok"]
    assert [b for b, _ in after["attempts"]] == [first] and "truncated" in after["attempts"][0][1]
    assert not cache.exists()


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_a_pick_from_another_cpu_is_never_reused(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    """The same cache folder seen by this CPU and by emulated older ones (a home shared across machines, a
    migrated VM): each CPU gets its own pick, never the other's."""
    env, _, _ = setup
    native = state(demo_venv, env)["variant"]
    assert state(demo_venv, env)["hit"]
    for model, expected in (("Nehalem", "x86-64-v2"), ("qemu64", "baseline")):
        emulated = state(demo_venv, env, qemu() or "qemu-x86_64", "-cpu", model)
        assert emulated["variant"] == expected and emulated["ok"] and not emulated["hit"], (model, emulated)
        again = state(demo_venv, env, qemu() or "qemu-x86_64", "-cpu", model)
        assert again["variant"] == expected and again["hit"], (model, again)
    back = state(demo_venv, env)
    assert back["variant"] == native and not back["hit"]


def test_pick_key_follows_every_input(tmp_path: Path) -> None:
    import _fatdispatch

    from fatdispatch._runtime import pick_key

    variants = tmp_path / "_core.variants"
    variants.mkdir()
    (variants / "manifest.json").write_text("{}")
    key = pick_key(str(variants))
    assert key is not None and key[0] == sysconfig.get_config_var("EXT_SUFFIX")
    assert len(key[1]) == 4 * 3  # mtime, size, inode of _runtime.py, _cpu.py, the helper, the manifest
    raw = _fatdispatch.x86()
    cpu = key[2]
    assert cpu[4:8] == [raw["1"][0], raw["1"][1] & 0x00FFFFFF, *raw["1"][2:]]  # the same words x86() reads
    assert cpu[8:20] == [*raw["7"], *raw["7.1"], *raw["0x80000001"]]
    assert cpu[20:] == [raw["max_ext"], raw["xcr0"], raw.get("amx_permission")]
    allowed = os.sched_getaffinity(0)
    try:
        for core in sorted(allowed):  # the APIC id differs per core; the key must not
            os.sched_setaffinity(0, {core})
            assert pick_key(str(variants)) == key
    finally:
        os.sched_setaffinity(0, allowed)
    (variants / "manifest.json").write_text("{} ")
    assert pick_key(str(variants)) != key
    assert pick_key(str(tmp_path / "missing")) is None


def test_compiled_lookup_checks_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_fatdispatch.cached_pick (the import path's whole check) against entries written where, and as,
    _runtime writes them; it reads the process environment itself, so the variables are set for real here."""
    import _fatdispatch

    import fatdispatch
    from fatdispatch._runtime import cache_root, file_identity, pick_file, pick_key

    assert (_fatdispatch.PICKS_SCHEMA, _fatdispatch.PICKS_DIR, _fatdispatch.LINUX_DRIVER_FILES) == (
        fatdispatch.PICKS_SCHEMA, fatdispatch.PICKS_DIR, fatdispatch.LINUX_DRIVER_FILES)
    for name in [k for k in os.environ if k.startswith("FATDISPATCH_")]:
        monkeypatch.delenv(name)
    variants = tmp_path / "pkg" / "_core.variants"
    (variants / "v2").mkdir(parents=True)
    so = variants / "v2" / "_core.so"
    so.write_bytes(b"\x7fELF")
    (variants / "manifest.json").write_text("{}")

    def lookup() -> object:
        return _fatdispatch.cached_pick(str(variants))

    def write(**changes: object) -> dict[str, object]:
        entry = {"schema": 2, "variants": str(variants), "key": pick_key(str(variants)), "build": "v2",
                 "path": str(so), "identity": file_identity(str(so)), "amx": False, "cuda": False}
        entry.update(changes)
        target = pick_file(str(variants))
        assert target is not None
        assert os.path.dirname(os.path.dirname(target)) == cache_root(os.environ)  # fatdispatch's one cache folder
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        Path(target).write_text(json.dumps(entry))
        os.chmod(target, 0o600)
        return entry

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    entry = write()  # ~/.cache/fatdispatch/picks-v2/...
    assert lookup() == entry
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lookup() is None
    entry = write()
    assert lookup() == entry
    monkeypatch.setenv("FATDISPATCH_ANYTHING", "")
    assert lookup() is None
    monkeypatch.delenv("FATDISPATCH_ANYTHING")
    entry = write(cuda=True)  # a module with CUDA builds: only where no NVIDIA driver is installed
    driver = any(os.path.exists(f) for f in fatdispatch.LINUX_DRIVER_FILES)
    assert lookup() == (None if driver else entry)
    for bad in ({"schema": 10**30}, {"schema": True}, {"variants": str(tmp_path)}, {"key": []}, {"build": 1},
                {"path": str(variants / "v2" / ".." / "v2" / "_core.so")}, {"path": str(tmp_path / "x.so")},
                {"identity": [0, 0, 0, 0]}):
        write(**bad)
        assert lookup() is None, bad
    write()
    assert lookup() is not None
    (variants / "manifest.json").write_text("{} ")  # the key follows the manifest
    assert lookup() is None
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: no cache, as cache_root says
    assert lookup() is None and pick_file(str(variants)) is None and cache_root(os.environ) is None


def test_a_hit_imports_no_python_package(demo_venv: Path, setup: tuple[dict[str, str], Path, Path]) -> None:
    """With the line fatdispatch.build writes (fatdemo has it by hand), a cached pick is found and loaded by the
    compiled helper alone: the fatdispatch package is not even imported."""
    env, _, _ = setup
    code = ("import sys, fatdemo; print(fatdemo.variant(), 'fatdispatch' in sys.modules, "
            "fatdemo.hamming(b'\\x0f' * 8, b'\\xf0' * 8))")
    first = run([str(demo_venv), "-c", code], env=env, cwd="/").stdout.split()
    again = run([str(demo_venv), "-c", code], env=env, cwd="/").stdout.split()
    assert first[1:] == ["True", "64"]  # the first import decides on the full path, in Python
    assert again == [first[0], "False", "64"]


def test_without_the_compiled_helper_everything_takes_the_full_path(
        demo_venv: Path, setup: tuple[dict[str, str], Path, Path], tmp_path: Path) -> None:
    """A fatdispatch without _fatdispatch (a platform it was not built for): the wiring falls back to
    fatdispatch.install, the CPU comes from /proc/cpuinfo, nothing is cached, and the pick is the same."""
    env, _, cache = setup
    best_build = best(demo_venv, env)
    site = Path(env["PYTHONPATH"])
    shutil.copytree(site_packages(demo_venv) / "fatdispatch", site / "fatdispatch")  # no _fatdispatch beside it
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == '_fatdispatch': raise ImportError('no compiled helper here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import fatdemo, fatdispatch\n"
            "from fatdispatch import _cpu\n"
            "print(fatdemo.variant(), '_fatdispatch' in sys.modules, _cpu.probe_cpu().source, "
            "fatdemo.hamming(b'\\x0f' * 8, b'\\xf0' * 8))")
    for _ in range(2):
        out = run([str(demo_venv), "-c", code], env=env, cwd="/").stdout.split()
        assert out == [best_build, "False", "proc-cpuinfo", "64"]
    assert not cache.exists()


def test_compiled_install_registers_all_or_none(tmp_path: Path) -> None:
    """_fatdispatch.install (what a fat package's __init__ calls) and fatdispatch.install agree: every module's
    folder is found before any is registered, and a missing one is the slow path's error, naming it."""
    import sys
    import types

    import _fatdispatch

    import fatdispatch
    from fatdispatch import FatDispatchError

    (tmp_path / "_a.variants").mkdir()
    for install, pkg in ((_fatdispatch.install, "fdtest_c"), (fatdispatch.install, "fdtest_py")):
        module = types.ModuleType(pkg)
        module.__path__ = [str(tmp_path)]
        sys.modules[pkg] = module
        try:
            with pytest.raises(FatDispatchError, match="_b.variants"):
                install(pkg, ["_a", "_b"])
            assert f"{pkg}._a" not in fatdispatch._registry
            install(pkg, ["_a"])
            assert fatdispatch._registry[f"{pkg}._a"] == str(tmp_path / "_a.variants")
        finally:
            del sys.modules[pkg]
            fatdispatch._registry.pop(f"{pkg}._a", None)
