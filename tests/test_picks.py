"""The pick cache: a later import reuses an earlier process's decision only while everything it rests on holds.

Each test gets its own cache folder and its own copy of the installed example, so that what it checks (hit or
miss, which build) is not decided by another test's run.  Attacks by another local user are in test_attacks.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import qemu, run, site_packages

pytestmark = pytest.mark.slow

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
STATE = """
import json, sys, fatdemo
hit = "fatdispatch" not in sys.modules
import fatdispatch
rec = fatdispatch.loaded("fatdemo._core")
print(json.dumps({"variant": fatdemo.variant(), "hit": hit, "record": rec.variant, "attempts": list(rec.attempts),
                  "ok": fatdemo.hamming(b"\\x0f" * 64, b"\\xf0" * 64) == 512, "file": fatdemo._core.__file__,
                  "chosen": rec.selection.chosen}))
"""


class Copy:
    """A private copy of the installed fatdemo with its own cache folder."""

    def __init__(self, demo_venv: Path, clean_env: dict[str, str], tmp_path: Path) -> None:
        self.py = demo_venv
        self.site = tmp_path / "site"
        shutil.copytree(site_packages(demo_venv) / "fatdemo", self.site / "fatdemo")
        self.cache_home = tmp_path / "cache"
        self.env = dict(clean_env, PYTHONPATH=str(self.site), XDG_CACHE_HOME=str(self.cache_home))
        self.env.pop("XDG_RUNTIME_DIR", None)
        self.tmp = tmp_path / "tmp"  # TMPDIR, where fatdispatch's own last-resort folder would go
        self.tmp.mkdir(mode=0o700)
        self.env["TMPDIR"] = str(self.tmp)
        self.variants = self.site / "fatdemo" / "_core.variants"
        st = self.variants.stat()
        self.entry = self.cache_home / "fatdispatch" / "picks-v3" / f"{st.st_dev:x}-{st.st_ino:x}"

    def state(self, *prefix: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> dict:
        return json.loads(run([*prefix, str(self.py), *args, "-c", STATE], env=env or self.env, cwd="/").stdout)

    def so(self, build: str) -> Path:
        return self.variants / build / f"_core{SUFFIX}"

    def lines(self) -> list[str]:
        return self.entry.read_text().split("\n")


@pytest.fixture
def copy(demo_venv: Path, clean_env: dict[str, str], tmp_path: Path) -> Copy:
    return Copy(demo_venv, clean_env, tmp_path)


def test_second_import_is_answered_by_the_cache(copy: Copy) -> None:
    first = copy.state()
    assert not first["hit"] and first["ok"]
    lines = copy.lines()
    assert lines[0] == "fatdispatch-pick 3" and lines[1] == str(copy.variants) and len(lines) == 12
    assert lines[3] == first["variant"] and lines[4] == str(copy.so(first["variant"])) and lines[7] == "x86_64"
    assert oct(copy.entry.stat().st_mode & 0o777) == "0o600"
    assert oct(copy.entry.parent.stat().st_mode & 0o777) == oct(copy.entry.parent.parent.stat().st_mode & 0o777) \
        == "0o700"
    second = copy.state()
    assert second["hit"] and second["ok"] and second["variant"] == first["variant"]
    # loaded() rebuilds the full record on demand: the same decision, with every build's reason
    assert second["record"] == second["chosen"] == first["variant"] and second["attempts"] == []


def test_any_fatdispatch_variable_bypasses_the_cache_and_forced_picks_are_never_written(copy: Copy) -> None:
    native = copy.state()["variant"]
    assert native != "baseline" and copy.state()["hit"]
    before = copy.entry.read_bytes()
    for env in ({"FATDISPATCH_FORCE": "baseline"}, {"FATDISPATCH_DISABLE": "avx2,avx512f"},
                {"FATDISPATCH_FORCE": "baseline", "FATDISPATCH_UNSAFE_FORCE": "1"}, {"FATDISPATCH_CACHE": "0"}):
        out = copy.state(env=dict(copy.env, **env))
        assert not out["hit"], env
        assert copy.entry.read_bytes() == before, env  # never written, never deleted
    assert copy.state()["hit"]
    copy.entry.unlink()
    copy.state(env=dict(copy.env, FATDISPATCH_FORCE="baseline"))
    assert not copy.entry.exists()  # a forced first import remembers nothing either


def test_a_decision_shaped_by_the_environment_is_never_written_whatever_the_environment_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer asks the decision whether FORCE/DISABLE/UNSAFE_FORCE shaped it, not the process environment
    when the loader runs (which may have changed in between)."""
    from conftest import demo_manifest, machine
    from fatdispatch._select import select

    sel = select(demo_manifest(), machine(), {"FATDISPATCH_FORCE": "baseline"})
    assert sel.chosen == "baseline" and not sel.cacheable
    assert select(demo_manifest(), machine(), {"FATDISPATCH_VERBOSE": "1"}).cacheable
    assert not select(demo_manifest(), machine(), {"FATDISPATCH_DISABLE": "avx2"}).cacheable
    import _fatdispatch

    from fatdispatch import _load

    wrote = []
    monkeypatch.setattr(_load, "remember_pick", lambda *a: wrote.append(a))
    _load.remember(str(tmp_path), sel, sel.candidate("baseline").variant, str(tmp_path / "x.so"), "", "", {})
    assert wrote == [] and _fatdispatch._PICKS_HERE


def test_changed_manifest_misses(copy: Copy) -> None:
    copy.state()
    assert copy.state()["hit"]
    manifest = copy.variants / "manifest.json"
    st = manifest.stat()
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not copy.state()["hit"]
    assert copy.state()["hit"]


@pytest.mark.parametrize("line,value", [
    (0, "fatdispatch-pick 2"), (1, "/elsewhere/_core.variants"), (2, "('another key',)"),
    (4, "/usr/lib/x86_64-linux-gnu/libc.so.6"), (4, "{variants}/../../evil/_core.so"), (6, "(1, 2, 3, 4, 5, 1)"),
    (7, "aarch64"), (8, "avx512_fp16 avx512f"), (9, "x"), (10, "0"), (10, "2"), (11, "trailing"),
])
def test_an_altered_entry_is_never_trusted(copy: Copy, line: int, value: str) -> None:
    copy.state()
    lines = copy.lines()
    lines[line] = value.format(variants=copy.variants)
    copy.entry.write_text("\n".join(lines))
    after = copy.state()
    # line 8 (a requirement this CPU lacks), 9 (AMX) and 10 (GPU facts) are checked, not trusted: a miss too
    assert not after["hit"] and after["ok"], (line, value)
    assert copy.state()["hit"]  # rewritten by the full path


def test_garbage_and_wrong_modes_are_ignored(copy: Copy) -> None:
    copy.state()
    good = copy.entry.read_bytes()
    for data, mode in ((b"\x00garbage{", 0o600), (good, 0o644), (good, 0o666), (good * 20, 0o600)):
        copy.entry.write_bytes(data)
        copy.entry.chmod(mode)
        after = copy.state()
        assert not after["hit"] and after["ok"], (data[:20], oct(mode))


def test_cache_keeps_one_small_file_per_folder_and_prunes_only_its_own_entries(tmp_path: Path) -> None:
    from fatdispatch._load import _is_pick_name
    from fatdispatch._privfile import open_private_dir, prune_private, write_private

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    fd, where = open_private_dir(env, "picks-v3", True)
    try:
        for i in range(70):
            write_private(fd, f"{i:x}-1", b"entry")
            os.utime(f"{where}/{i:x}-1", ns=(i * 10**9, i * 10**9))
        for other in ("notes.txt", "README", "ab-cd.json", "zz-1"):
            write_private(fd, other, b"not ours to delete")
        Path(where, ".stale.1.2.tmp").write_bytes(b"a writer that died")
        os.utime(f"{where}/.stale.1.2.tmp", ns=(0, 0))
        prune_private(fd, _is_pick_name, 64)
    finally:
        os.close(fd)
    left = sorted(int(p.name.split("-")[0], 16) for p in Path(where).iterdir() if _is_pick_name(p.name))
    assert left == list(range(6, 70))  # the 64 most recently written
    assert {"notes.txt", "README", "ab-cd.json", "zz-1"} <= {p.name for p in Path(where).iterdir()}
    assert not Path(where, ".stale.1.2.tmp").exists()


def test_forgetting_a_pick_follows_no_link_out_of_the_private_folders(tmp_path: Path) -> None:
    """``remove_everywhere`` (a pick or GPU facts that failed to load) unlinks only inside a checked private
    chain: a ``fatdispatch`` link in the home base, a ``picks-v3`` link in the runtime folder and an own
    temporary base planted as a link each lead to a folder holding a file of that name, and none is touched;
    the same name in a real private chain is removed."""
    from fatdispatch._privfile import remove_everywhere

    name = "0123abcd-4567ef"
    outside = [tmp_path / f"outside{i}" for i in range(3)]
    for i, o in enumerate(outside):
        (o / "picks-v3").mkdir(parents=True)
        (o / "fatdispatch" / "picks-v3").mkdir(parents=True)
        for f in (o / "picks-v3" / name, o / "fatdispatch" / "picks-v3" / name):
            f.write_text(f"someone else's file {i}")
    home, run_dir, tmp = tmp_path / "home", tmp_path / "run", tmp_path / "tmp"
    for d in (home, run_dir, tmp):
        d.mkdir(mode=0o700)
    (home / "fatdispatch").symlink_to(outside[0])
    (run_dir / "fatdispatch").mkdir(mode=0o700)
    (run_dir / "fatdispatch" / "picks-v3").symlink_to(outside[1] / "picks-v3")
    (tmp / f"fatdispatch-{os.geteuid()}").symlink_to(outside[2])
    env = {"XDG_CACHE_HOME": str(home), "XDG_RUNTIME_DIR": str(run_dir), "TMPDIR": str(tmp)}
    remove_everywhere(env, "picks-v3", name)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob(f"outside*/**/{name}"))
    assert len(left) == 6, left
    ours = tmp_path / "ours"
    (ours / "fatdispatch" / "picks-v3").mkdir(parents=True, mode=0o700)
    for d in (ours, ours / "fatdispatch"):
        d.chmod(0o700)
    (ours / "fatdispatch" / "picks-v3" / name).write_text("ours")
    remove_everywhere(dict(env, XDG_CACHE_HOME=str(ours)), "picks-v3", name)
    assert not (ours / "fatdispatch" / "picks-v3" / name).exists()


def test_a_missing_runtime_folder_is_never_made_even_under_a_parent_of_ours(tmp_path: Path) -> None:
    """``XDG_RUNTIME_DIR`` belongs to the session manager: where it is missing (its parent ours or not) the picks
    go to the next base, and it is not created."""
    from fatdispatch._privfile import open_private_dir

    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)  # the home base cannot be used
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    env = {"XDG_CACHE_HOME": str(loose), "XDG_RUNTIME_DIR": str(tmp_path / "run"), "TMPDIR": str(tmp)}
    fd, where = open_private_dir(env, "picks-v3", True)
    os.close(fd)
    assert where == str(tmp / f"fatdispatch-{os.geteuid()}" / "fatdispatch" / "picks-v3")
    assert not (tmp_path / "run").exists() and list(loose.iterdir()) == []


def test_a_replaced_build_file_is_not_trusted(copy: Copy) -> None:
    """The cached file is loaded again only while it is the very inode that was checked: a replaced file goes
    through the full path and its checks first."""
    first = copy.state()["variant"]
    so = copy.so(first)
    data = so.read_bytes()
    so.unlink()
    so.write_bytes(data)  # same content, new inode
    again = copy.state()
    assert not again["hit"] and again["variant"] == first and again["attempts"] == []
    assert copy.state()["hit"]


def test_a_build_rewritten_in_place_with_its_mtime_restored_is_checked_again(copy: Copy) -> None:
    """Truncated in place with utime() restoring its mtime: its ctime moved, so the hit is refused and the
    full path's ELF check (not dlopen, which would die with SIGBUS) finds it truncated, then falls back."""
    first = copy.state()["variant"]
    if first == "baseline":
        pytest.skip("needs a CPU above baseline")
    so = copy.so(first)
    st = so.stat()
    with open(so, "r+b") as f:
        f.truncate(4096)
    os.utime(so, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = run([str(copy.py), "-W", "ignore", "-c", STATE], env=copy.env, cwd="/")
    after = json.loads(out.stdout)
    assert not after["hit"] and after["variant"] != first and after["ok"]
    assert [b for b, _ in after["attempts"]] == [first] and "truncated" in after["attempts"][0][1]
    assert not copy.entry.exists()  # forgotten: its pick did not load


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_a_pick_from_another_cpu_is_never_reused(copy: Copy) -> None:
    """The same cache folder seen by this CPU and by emulated older ones (a home shared across machines, a
    migrated VM): each CPU gets its own pick, never the other's."""
    native = copy.state()["variant"]
    assert copy.state()["hit"]
    for model, expected in (("Nehalem", "x86-64-v2"), ("qemu64", "baseline")):
        emulated = copy.state(qemu() or "qemu-x86_64", "-cpu", model)
        assert emulated["variant"] == expected and emulated["ok"] and not emulated["hit"], (model, emulated)
        again = copy.state(qemu() or "qemu-x86_64", "-cpu", model)
        assert again["variant"] == expected and again["hit"], (model, again)
    back = copy.state()
    assert back["variant"] == native and not back["hit"]


def test_pick_key_follows_every_input(tmp_path: Path) -> None:
    import _fatdispatch

    variants = tmp_path / "_core.variants"
    variants.mkdir()
    (variants / "manifest.json").write_text("{}")
    raw = _fatdispatch.cpu()["raw"]
    key = _fatdispatch.pick_key(str(variants), raw, False, {})
    words = _fatdispatch.cpu_words(raw)
    assert words in key and key.startswith(sys.implementation.cache_tag + " ") and "\n" not in key
    other_core = dict(raw)
    other_core["1"] = (raw["1"][0], raw["1"][1] ^ 0x7F000000, raw["1"][2], raw["1"][3])
    assert _fatdispatch.cpu_words(other_core) == words  # the APIC id (CPUID.1:EBX 31-24) is masked
    allowed = os.sched_getaffinity(0)
    try:
        for core in sorted(allowed):  # the APIC id differs per core; the key must not
            os.sched_setaffinity(0, {core})
            assert _fatdispatch.pick_key(str(variants), _fatdispatch.cpu()["raw"], False, {}) == key
    finally:
        os.sched_setaffinity(0, allowed)
    changed = dict(raw, xcr0=(raw.get("xcr0") or 0) ^ 0xE0)  # the OS stopped saving ZMM state
    assert _fatdispatch.pick_key(str(variants), changed, False, {}) != key
    gpu = _fatdispatch.pick_key(str(variants), raw, True, {})
    assert gpu != key and gpu.endswith(" " + _fatdispatch.gpu_facts_key({}))
    (variants / "manifest.json").write_text("{} ")
    assert _fatdispatch.pick_key(str(variants), raw, False, {}) != key


def test_a_hit_imports_no_python_package(copy: Copy) -> None:
    """With the wiring line, a cached pick is found and loaded by _fatdispatch alone: the fatdispatch package
    is not even imported."""
    code = ("import sys, fatdemo; print(fatdemo.variant(), 'fatdispatch' in sys.modules, "
            "sorted(m for m in sys.modules if 'fatdispatch' in m), fatdemo.hamming(b'\\x0f' * 8, b'\\xf0' * 8))")
    first = run([str(copy.py), "-c", code], env=copy.env, cwd="/").stdout.split(" ", 2)
    again = run([str(copy.py), "-c", code], env=copy.env, cwd="/").stdout.strip()
    assert first[1] == "True"  # the first import decides on the full path
    assert again == f"{first[0]} False ['_fatdispatch'] 64"


def test_the_build_side_needs_no_compiled_module(copy: Copy) -> None:
    """fatdispatch builds itself, and cross-builds for other machines, with its build helper: the build side
    (and the CPU decoders it uses) imports without the compiled ``_fatdispatch``, where the import path does not."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == '_fatdispatch': raise ImportError('not built here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import fatdispatch.build, fatdispatch._manifest\n"
            "from fatdispatch import _cpu\n"
            "print(_cpu.native(), _cpu.normalize_arch('amd64'), '_fatdispatch' in sys.modules)\n"
            "try:\n"
            "    import fatdemo\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, e)\n")
    out = run([str(copy.py), "-c", code], env=copy.env, cwd="/").stdout.splitlines()
    assert out == ["None x86_64 False", "ImportError not built here"], out


def test_fatdispatch_cache_0_never_deletes_a_valid_entry(copy: Copy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fallback under FATDISPATCH_CACHE=0 leaves the cache alone (it may not be read, written or deleted)."""
    first = copy.state()["variant"]
    before = copy.entry.read_bytes()
    from fatdispatch import _load

    monkeypatch.setenv("XDG_CACHE_HOME", str(copy.cache_home))
    forgot = []
    monkeypatch.setattr(_load, "forget_pick", lambda *a: forgot.append(a))
    bad = copy.variants / "broken"
    (bad / first).mkdir(parents=True)
    (bad / first / f"_core{SUFFIX}").write_bytes(b"not ELF")
    from conftest import machine
    from fatdispatch._manifest import read_manifest
    from fatdispatch._select import select

    import _fatdispatch

    sel = select(read_manifest(str(copy.variants)), machine(), {"FATDISPATCH_CACHE": "0"})
    spec = _fatdispatch.ModuleSpec("fatdemo._core", _fatdispatch)
    with pytest.raises(Exception):  # every build of the recorded machine's order is unloadable from this folder
        _load.load_selection(spec, str(bad), sel, {"FATDISPATCH_CACHE": "0"})
    assert forgot == [] and copy.entry.read_bytes() == before


def test_unwritable_cache_folder_costs_nothing_more_and_is_said_once(copy: Copy, tmp_path: Path) -> None:
    """Cache folders that cannot be made (under /proc: not even root can), the temporary folder's too: the
    import works on the full path, FATDISPATCH_VERBOSE says why there is no cache (once), and a private
    XDG_RUNTIME_DIR keeps the picks."""
    env = dict(copy.env, XDG_CACHE_HOME="/proc/fatdispatch-cache", HOME="/proc/fatdispatch-cache",
               TMPDIR="/proc/fatdispatch-tmp")
    code = "import fatdemo, importlib; importlib.reload(fatdemo._core)"
    out = run([str(copy.py), "-c", code], env=dict(env, FATDISPATCH_VERBOSE="1"), cwd="/")
    assert out.stderr.count("pick cache cannot be written") == 1, out.stderr
    assert not copy.state(env=env)["hit"] and not copy.state(env=env)["hit"]
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env["XDG_RUNTIME_DIR"] = str(run_dir)
    assert not copy.state(env=env)["hit"]
    assert copy.state(env=env)["hit"]  # kept in the runtime folder


def test_runtime_folder_keeps_picks_where_the_home_cannot_be_used(copy: Copy, tmp_path: Path) -> None:
    """A cache base this user does not own (or anyone may write) is never used; XDG_RUNTIME_DIR is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # like /tmp: anyone could plant or swap folders there
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = dict(copy.env, XDG_CACHE_HOME=str(shared), XDG_RUNTIME_DIR=str(run_dir))
    copy.state(env=env)
    assert not (shared / "fatdispatch").exists()
    assert copy.state(env=env)["hit"] and list((run_dir / "fatdispatch" / "picks-v3").iterdir())


def test_a_pick_that_fails_to_load_is_forgotten_in_whichever_folder_holds_it(copy: Copy, tmp_path: Path) -> None:
    """The import path takes the first entry it finds in any base, so a pick that no longer loads is removed from
    every base holding one: here the entry was written to XDG_RUNTIME_DIR while the home could not be used,
    and the home's folders exist by now (another fat package's picks).  Before: only the first base with the
    folders was cleaned, so the entry stayed, and every import tried it again before deciding afresh."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)  # not usable: anyone may write there
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = dict(copy.env, XDG_CACHE_HOME=str(home), XDG_RUNTIME_DIR=str(run_dir))
    first = copy.state(env=env)
    entry = run_dir / "fatdispatch" / "picks-v3" / copy.entry.name
    assert entry.exists() and not (home / "fatdispatch").exists()
    home.chmod(0o700)
    (home / "fatdispatch" / "picks-v3").mkdir(mode=0o700, parents=True)
    (home / "fatdispatch").chmod(0o700)
    import _fatdispatch

    shutil.copyfile(_fatdispatch.__file__, copy.so(first["variant"]))  # an ELF file without PyInit__core
    second = copy.state(env=env)
    assert not second["hit"] and second["variant"] != first["variant"]
    assert second["attempts"][0][0] == first["variant"] and "PyInit__core" in second["attempts"][0][1]
    assert not entry.exists() and not list((home / "fatdispatch" / "picks-v3").iterdir())
    assert not copy.state(env=env)["hit"]  # a fallback is never remembered: decided afresh while the build fails


def test_own_temporary_folder_keeps_picks_where_neither_home_nor_runtime_folder_can(copy: Copy,
                                                                                    tmp_path: Path) -> None:
    """A read-only home and no XDG_RUNTIME_DIR (containers, CI, batch jobs): the picks go to fatdispatch's own
    $TMPDIR/fatdispatch-<uid>, made 0700 whatever the umask (here a sticky, world-writable TMPDIR like /tmp),
    and the second import is a hit.  FATDISPATCH_VERBOSE names every folder tried where none can be used."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = dict(copy.env, XDG_CACHE_HOME="/proc/fatdispatch-cache", HOME="/proc/fatdispatch-cache",
               TMPDIR=str(shared) + "/")
    first = run([str(copy.py), "-c", "import os; os.umask(0); " + STATE], env=env, cwd="/")
    assert not json.loads(first.stdout)["hit"]
    own = shared / f"fatdispatch-{os.geteuid()}"
    chain = [own, own / "fatdispatch", own / "fatdispatch" / "picks-v3"]
    assert [oct(p.stat().st_mode & 0o777) for p in chain] == ["0o700"] * 3
    assert all(p.lstat().st_uid == os.geteuid() and not p.is_symlink() for p in chain)
    assert [p.name for p in chain[-1].iterdir()] == [copy.entry.name]
    second = copy.state(env=env)
    assert second["hit"] and second["variant"] == json.loads(first.stdout)["variant"]
    assert not copy.cache_home.exists()
    # a relative TMPDIR is ignored (/tmp), as an unset one is; where none can be used, every folder is named
    import _fatdispatch

    bases = _fatdispatch.cache_bases({"HOME": "/h", "TMPDIR": "relative"})
    assert bases == [("/h/.cache", False, False), (f"/tmp/fatdispatch-{os.geteuid()}", True, True)]
    assert _fatdispatch.cache_bases({"HOME": "/h", "TMPDIR": "/"})[-1] == (f"/fatdispatch-{os.geteuid()}", True, True)
    assert _fatdispatch.cache_bases({"HOME": "/h", "TMPDIR": "/x//"})[-1][0] == f"/x/fatdispatch-{os.geteuid()}"
    assert len(_fatdispatch.cache_bases({"HOME": "/h", "TMPDIR": "/" + "x" * 5000})) == 1  # no folder can be there
    none = dict(env, TMPDIR="/proc/fatdispatch-tmp", FATDISPATCH_VERBOSE="1")
    said = run([str(copy.py), "-c", "import fatdemo"], env=none, cwd="/").stderr
    assert said.count("pick cache cannot be written") == 1
    assert "/proc/fatdispatch-cache" in said and f"/proc/fatdispatch-tmp/fatdispatch-{os.geteuid()}" in said, said


def test_install_registers_all_or_none(tmp_path: Path) -> None:
    """install (what a fat package's __init__ calls): every module's folder is found before any is registered,
    and a missing one is the full path's error, naming it; a bare string is refused."""
    import types

    import _fatdispatch

    from fatdispatch import FatDispatchError

    (tmp_path / "_a.variants").mkdir()
    pkg = "fdtest_pkg"
    module = types.ModuleType(pkg)
    module.__path__ = [str(tmp_path)]  # type: ignore[attr-defined]
    sys.modules[pkg] = module
    try:
        with pytest.raises(FatDispatchError, match="_b.variants"):
            _fatdispatch.install(pkg, ["_a", "_b"])
        assert f"{pkg}._a" not in _fatdispatch.registry
        with pytest.raises(TypeError, match="list of names"):
            _fatdispatch.install(pkg, "_a")
        _fatdispatch.install(pkg, ["_a"])
        assert _fatdispatch.registry[f"{pkg}._a"] == str(tmp_path / "_a.variants")
    finally:
        del sys.modules[pkg]
        _fatdispatch.registry.pop(f"{pkg}._a", None)


def test_install_after_del_sys_modules_is_an_error_not_a_crash() -> None:
    code = ("import sys, _fatdispatch\n"
            "for k in list(sys.modules):\n"
            "    if k not in ('sys', 'builtins', '_fatdispatch'): del sys.modules[k]\n"
            "try:\n    _fatdispatch.install('gone', ['_core'])\nexcept ImportError as e:\n    print('error:', e)\n")
    out = run([sys.executable, "-c", code])
    assert "error:" in out.stdout and "not an imported package" in out.stdout


def test_a_folder_with_a_nul_gets_no_other_folders_pick(copy: Copy) -> None:
    """A fat module registered with a variants folder that holds a NUL is refused on a hit as on the full path
    (before: the C hit cut the path at the NUL and bound the pick of the folder before it)."""
    copy.state()  # the pick of the real folder is written
    assert copy.entry.exists()
    code = ("import _fatdispatch, sys, types\n"
            "pkg = types.ModuleType('evil'); pkg.__path__ = []; sys.modules['evil'] = pkg\n"
            f"_fatdispatch.register('evil._core', {str(copy.variants)!r} + '\\x00/../../elsewhere')\n"
            "try:\n"
            "    import evil._core as m\n"
            "    print('bound', m.__fatdispatch_variant__)\n"
            "except Exception as e:\n"
            "    print('refused', type(e).__name__)\n")
    out = run([str(copy.py), "-c", code], env=copy.env, cwd="/").stdout.split()
    assert out[0] == "refused", out


def test_a_build_whose_init_fails_on_a_hit_falls_back_to_the_full_path(copy: Copy) -> None:
    """An extension init that raises (here a RuntimeError, the first time only) on a hit is a miss, as a failed
    load is on the full path: the full path decides afresh and binds the build (before: the hit let the
    RuntimeError out of the import)."""
    first = copy.state()
    assert copy.entry.exists()
    code = ("import _imp, json, sys\n"
            "real, calls = _imp.create_dynamic, []\n"
            "def once(spec, *rest):  # _fatdispatch itself is loaded through it too\n"
            "    calls.extend([spec.origin] if spec.name == 'fatdemo._core' else [])\n"
            "    if calls == [spec.origin]:\n"
            "        raise RuntimeError('init failed once')\n"
            "    return real(spec, *rest)\n"
            "_imp.create_dynamic = once  # _fatdispatch takes it from _imp when it loads\n"
            "import fatdemo, _fatdispatch\n"
            "print(json.dumps({'variant': fatdemo.variant(), 'calls': calls, 'hits': list(_fatdispatch.hits),\n"
            "                  'full': 'fatdispatch._load' in sys.modules, 'ok': fatdemo.popcount(b'\\xff') == 8}))\n")
    out = json.loads(run([str(copy.py), "-c", code], env=copy.env, cwd="/").stdout)
    assert out["variant"] == first["variant"] and out["ok"]
    assert out["calls"] == [str(copy.so(first["variant"]))] * 2  # the hit's try, then the full path's
    assert out["full"] and out["hits"] == []


def test_a_logging_failure_after_a_hit_is_said_not_raised(copy: Copy) -> None:
    """An application whose fatdispatch DEBUG logging raises still gets the module bound from the pick cache; the
    failure is reported as unraisable, on stderr (before: it failed the import)."""
    first = copy.state()
    code = ("import json, logging, _fatdispatch\n"
            "logging.basicConfig(level=logging.DEBUG)\n"
            "def boom(record):\n"
            "    raise ValueError('a filter that raises')\n"
            "logging.getLogger('fatdispatch').addFilter(boom)\n"
            "import fatdemo\n"
            "print(json.dumps({'variant': fatdemo.variant(), 'hits': list(_fatdispatch.hits)}))\n")
    proc = run([str(copy.py), "-c", code], env=copy.env, cwd="/")
    out = json.loads(proc.stdout)
    assert out == {"variant": first["variant"], "hits": ["fatdemo._core"]}
    assert "a filter that raises" in proc.stderr and "fatdemo._core" in proc.stderr
