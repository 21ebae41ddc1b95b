"""Per-user files an attacker cannot use: each attack of the import-path issue, tried as another local user.

Two real users are made with ``useradd`` (root only; CI runs as root): a victim who imports fatdemo, and an
attacker who owns the folder the victim's ``XDG_CACHE_HOME`` points into.  They run the system's
``/usr/bin/python3.11`` (the tests' interpreter lives under root's home) over a world-readable copy of the
installed example.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import qemu, site_packages

pytestmark = [pytest.mark.slow]

SYSTEM_PY = "/usr/bin/python3.11"
VICTIM, ATTACKER = "fdvictim", "fdattacker"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
STATE = ("import json, sys, fatdemo\n"
         "hit = 'fatdispatch' not in sys.modules\n"
         "maps = open('/proc/self/maps').read()\n"
         "print(json.dumps({'variant': fatdemo.variant(), 'hit': hit, 'file': fatdemo._core.__file__,\n"
         "                  'ok': fatdemo.hamming(b'\\x0f' * 64, b'\\xf0' * 64) == 512, 'maps': maps}))\n")


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def world(demo_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("needs root with useradd and runuser (CI runs as root)")
    if not os.path.exists(SYSTEM_PY) or sys.version_info[:2] != (3, 11):
        pytest.skip(f"needs {SYSTEM_PY}, the same Python minor as the tests, to run as another user")
    victim, attacker = _user(VICTIM), _user(ATTACKER)
    root = Path("/tmp") / f"fdattack-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    site = root / "site"
    src = site_packages(demo_venv)
    for name in os.listdir(src):
        if name.startswith(("fatdemo", "fatdispatch", "_fatdispatch")) and not name.endswith(".dist-info"):
            (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, site / name)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    yield {"root": root, "site": site, "victim": victim, "attacker": attacker}
    shutil.rmtree(root, ignore_errors=True)


def as_user(world: dict, user: str | None, code: str, env: dict[str, str], prefix: tuple[str, ...] = (),
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # TMPDIR under /proc: fatdispatch's own temporary folder cannot be made, so each attack on a cache folder
    # meets no fallback unless the test gives one (the temporary-folder attacks do)
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world["site"]), "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": "/proc/fatdispatch-tmp"}
    cmd = [*prefix, SYSTEM_PY, "-c", code]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in {**base, **env}.items()), *cmd]
        env = {}
    return subprocess.run(cmd, env={**base, **env} if user is None else None, capture_output=True, text=True,
                          cwd="/", timeout=timeout)


def state(world: dict, user: str | None, env: dict[str, str], prefix: tuple[str, ...] = ()) -> dict:
    out = as_user(world, user, STATE, env, prefix)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def owned_dir(path: Path, user: pwd.struct_passwd, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_symlinked_cache_folders_lead_nowhere(world: dict, tmp_path: Path) -> None:
    """The attacker owns the victim's XDG_CACHE_HOME and points fatdispatch/picks-v3 at a folder of the
    victim's full of entry-like files: the import writes nothing there and deletes nothing."""
    victim, attacker = world["victim"], world["attacker"]
    room = owned_dir(world["root"] / "room1", attacker, 0o755)
    precious = owned_dir(world["root"] / "precious1", victim, 0o700)
    for i in range(70):
        (precious / f"{i:x}-1").write_text(f"the victim's own file {i}")
    subprocess.run(["chown", "-R", f"{victim.pw_uid}:{victim.pw_gid}", str(precious)], check=True)
    cache = owned_dir(room / "cache", attacker)
    owned_dir(cache / "fatdispatch", attacker)
    os.symlink(precious, cache / "fatdispatch" / "picks-v3")
    before = snapshot(precious)
    for _ in range(2):
        out = state(world, VICTIM, {"HOME": str(room), "XDG_CACHE_HOME": str(cache)})
        assert out["ok"] and not out["hit"]
    assert snapshot(precious) == before


def test_planted_fifo_entry_cannot_hang_the_import(world: dict) -> None:
    attacker = world["attacker"]
    room = owned_dir(world["root"] / "room2", attacker)
    cache = owned_dir(room / "cache", attacker)
    picks = owned_dir(cache / "fatdispatch" / "picks-v3", attacker, 0o700)
    st = (world["site"] / "fatdemo" / "_core.variants").stat()
    os.mkfifo(picks / f"{st.st_dev:x}-{st.st_ino:x}")
    os.chown(picks / f"{st.st_dev:x}-{st.st_ino:x}", attacker.pw_uid, attacker.pw_gid)
    out = state(world, VICTIM, {"HOME": str(room), "XDG_CACHE_HOME": str(cache)})  # timeout: 60 s
    assert out["ok"]


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_planted_or_hard_linked_entries_never_pick_an_unrunnable_build(world: dict) -> None:
    """Entries a victim would take for its own: one the attacker wrote (naming x86-64-v3 for a Nehalem), and a
    hard link of the victim's real entry (made by root here; protected_hardlinks stops users).  Under qemu
    Nehalem the victim still gets x86-64-v2, and no SIGILL."""
    victim, attacker = world["victim"], world["attacker"]
    room = owned_dir(world["root"] / "room3", attacker)
    cache = owned_dir(room / "cache", attacker)
    own = owned_dir(world["root"] / "vcache3", victim, 0o700)
    env_own = {"HOME": str(room), "XDG_CACHE_HOME": str(own)}
    nehalem = (qemu() or "qemu-x86_64", "-cpu", "Nehalem")
    first = state(world, VICTIM, env_own, nehalem)
    assert first["variant"] == "x86-64-v2"
    entry = next((own / "fatdispatch" / "picks-v3").iterdir())
    lines = entry.read_text().split("\n")
    v3 = world["site"] / "fatdemo" / "_core.variants" / "x86-64-v3" / f"_core{SUFFIX}"
    st = v3.stat()
    lines[3], lines[4], lines[5], lines[8] = "x86-64-v3", str(v3), str(v3), ""
    lines[6] = repr((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink))
    planted = owned_dir(cache / "fatdispatch" / "picks-v3", attacker, 0o700) / entry.name
    planted.write_text("\n".join(lines))
    os.chown(planted, attacker.pw_uid, attacker.pw_gid)
    planted.chmod(0o600)
    out = state(world, VICTIM, {"HOME": str(room), "XDG_CACHE_HOME": str(cache)}, nehalem)
    assert out["variant"] == "x86-64-v2" and out["ok"] and not out["hit"]
    # the victim's own entry, edited the same way and hard-linked into the attacker's folder
    entry.write_text("\n".join(lines))
    planted.unlink()
    os.link(entry, planted)
    out = state(world, VICTIM, {"HOME": str(room), "XDG_CACHE_HOME": str(cache)}, nehalem)
    assert out["variant"] == "x86-64-v2" and out["ok"] and not out["hit"]


def test_a_build_folder_swapped_for_a_symlink_out_of_the_package_is_not_loaded(world: dict, tmp_path: Path) -> None:
    victim = world["victim"]
    site = world["root"] / "site4"
    shutil.copytree(world["site"], site)
    subprocess.run(["chown", "-R", f"{victim.pw_uid}:{victim.pw_gid}", str(site)], check=True)
    cache = owned_dir(world["root"] / "vcache4", victim, 0o700)
    env = {"HOME": str(cache), "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(site)}
    first = state(world, VICTIM, env)
    assert state(world, VICTIM, env)["hit"]
    build = site / "fatdemo" / "_core.variants" / first["variant"]
    evil = world["root"] / "evil4"
    shutil.copytree(build, evil)  # the same bytes, outside the package
    subprocess.run(["chmod", "-R", "a+rX", str(evil)], check=True)
    shutil.rmtree(build)
    os.symlink(evil, build)
    out = state(world, VICTIM, env)
    assert out["ok"] and not out["hit"] and out["variant"] != first["variant"]
    assert str(evil) not in out["maps"] and os.path.realpath(out["file"]).startswith(str(site))


def test_root_with_another_users_home_creates_nothing_there(world: dict) -> None:
    victim = world["victim"]
    home = owned_dir(world["root"] / "alice5", victim, 0o755)
    out = state(world, None, {"HOME": str(home)})
    assert out["ok"] and not (home / ".cache").exists()


def test_root_with_another_users_home_writes_nothing_where_their_cache_link_points(world: dict) -> None:
    """The other user's ``~/.cache`` is their symlink to a folder of root's (as ``/etc`` would be): it passes the
    base's own checks (root's, writable by nobody else), but that user chose it, so root's import writes nothing
    there and still works."""
    victim = world["victim"]
    home = owned_dir(world["root"] / "alice5b", victim, 0o755)
    roots = world["root"] / "roots5b"
    roots.mkdir(mode=0o755)
    (roots / "keep").write_text("root's own file")
    link = home / ".cache"
    link.symlink_to(roots)
    os.lchown(link, victim.pw_uid, victim.pw_gid)
    out = state(world, None, {"HOME": str(home)})
    assert out["ok"] and not out["hit"]
    assert sorted(p.name for p in roots.iterdir()) == ["keep"]


def test_a_missing_home_cache_is_made_only_in_a_folder_of_the_users_own(world: dict) -> None:
    """``XDG_CACHE_HOME`` names a missing folder in a shared sticky folder of root's (as ``/tmp`` is): the user
    may write there, but the name is not theirs to claim, so the import makes nothing and still works."""
    shared = world["root"] / "shared5c"
    shared.mkdir()
    shared.chmod(0o1777)
    out = state(world, VICTIM, {"HOME": str(shared), "XDG_CACHE_HOME": str(shared / "vcache")})
    assert out["ok"] and not out["hit"]
    assert list(shared.iterdir()) == []


def test_umask_000_still_makes_private_folders(world: dict) -> None:
    victim = world["victim"]
    home = owned_dir(world["root"] / "home6", victim, 0o755)
    out = as_user(world, VICTIM, "import os; os.umask(0); import fatdemo", {"HOME": str(home)})
    assert out.returncode == 0, out.stderr
    cache = home / ".cache"
    modes = [oct(p.stat().st_mode & 0o777) for p in (cache, cache / "fatdispatch", cache / "fatdispatch" / "picks-v3")]
    entry = next((cache / "fatdispatch" / "picks-v3").iterdir())
    assert modes == ["0o700"] * 3 and oct(entry.stat().st_mode & 0o777) == "0o600"
    assert all(p.stat().st_uid == victim.pw_uid for p in (cache, entry))


def test_a_full_disk_leaves_no_temporary_file(world: dict) -> None:
    """The victim's cache on a full 16 KiB tmpfs (a private mount namespace): the import works, the write
    fails, and no .tmp file is left behind, import after import."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare missing")
    disk = world["root"] / "disk7"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=16k,mode=0700 tmpfs {disk} && "
              f"mkdir -m 700 -p {disk}/fatdispatch/picks-v3 && "
              f"(head -c 100000 /dev/zero > {disk}/filler 2>/dev/null; true) && "
              f"for i in 1 2 3; do PYTHONPATH={world['site']} XDG_CACHE_HOME={disk} PYTHONDONTWRITEBYTECODE=1 "
              f"{SYSTEM_PY} -c 'import fatdemo; print(fatdemo.variant())' || exit 9; done && "
              f"echo ==; ls -a {disk}/fatdispatch/picks-v3")
    out = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "mount" in out.stderr and "permission" in out.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    picks, _, listing = out.stdout.partition("==")
    assert len(set(picks.split())) == 1 and len(picks.split()) == 3  # the same pick three times
    assert [x for x in listing.split() if x not in (".", "..")] == []  # no entry fits, and no .tmp is left


def _shared_tmp(world: dict, name: str) -> Path:
    """A shared temporary folder like /tmp: root's, sticky, world-writable."""
    shared = world["root"] / name
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


NO_HOME = {"HOME": "/proc/fatdispatch-home"}  # no cache folder in the home, and no XDG_RUNTIME_DIR


def test_own_temporary_folder_is_the_victims_and_keeps_the_picks(world: dict) -> None:
    victim = world["victim"]
    shared = _shared_tmp(world, "tmp8")
    env = dict(NO_HOME, TMPDIR=str(shared))
    assert not state(world, VICTIM, env)["hit"]
    assert state(world, VICTIM, env)["hit"]
    own = shared / f"fatdispatch-{victim.pw_uid}"
    chain = [own, own / "fatdispatch", own / "fatdispatch" / "picks-v3"]
    assert [(p.lstat().st_uid, oct(p.lstat().st_mode)) for p in chain] == [(victim.pw_uid, "0o40700")] * 3


def test_a_temporary_folder_another_user_made_first_is_never_used(world: dict) -> None:
    """The attacker makes the victim's $TMPDIR/fatdispatch-<uid> first, open to all, with the cache folders
    inside: the victim's imports work, are never hits, and write nothing there."""
    victim, attacker = world["victim"], world["attacker"]
    shared = _shared_tmp(world, "tmp9")
    planted = owned_dir(shared / f"fatdispatch-{victim.pw_uid}", attacker, 0o777)
    owned_dir(planted / "fatdispatch", attacker, 0o777)
    owned_dir(planted / "fatdispatch" / "picks-v3", attacker, 0o777)
    for _ in range(2):
        out = state(world, VICTIM, dict(NO_HOME, TMPDIR=str(shared)))
        assert out["ok"] and not out["hit"]
    assert [p for p in planted.rglob("*") if p.lstat().st_uid != attacker.pw_uid] == []


def test_a_temporary_folder_planted_as_a_symlink_leads_nowhere(world: dict) -> None:
    """The attacker plants $TMPDIR/fatdispatch-<uid> as a symlink to a private cache folder of the victim's
    holding the victim's own valid pick: the victim's imports through it are never hits (the link is not
    followed, by the reader or the writer), and nothing there is created or deleted."""
    victim, attacker = world["victim"], world["attacker"]
    shared = _shared_tmp(world, "tmp10")
    precious = owned_dir(world["root"] / "precious10", victim, 0o700)
    assert not state(world, VICTIM, {"HOME": str(precious), "XDG_CACHE_HOME": str(precious)})["hit"]
    assert state(world, VICTIM, {"HOME": str(precious), "XDG_CACHE_HOME": str(precious)})["hit"]  # a valid pick
    picks = precious / "fatdispatch" / "picks-v3"
    for i in range(70):
        (picks / f"{i:x}-1").write_text(f"the victim's own file {i}")
    subprocess.run(["chown", "-R", f"{victim.pw_uid}:{victim.pw_gid}", str(precious)], check=True)
    link = shared / f"fatdispatch-{victim.pw_uid}"
    os.symlink(precious, link)
    os.lchown(link, attacker.pw_uid, attacker.pw_gid)
    before = snapshot(picks)
    for _ in range(2):
        out = state(world, VICTIM, dict(NO_HOME, TMPDIR=str(shared)))
        assert out["ok"] and not out["hit"]
    assert snapshot(picks) == before and sorted(p.name for p in precious.iterdir()) == ["fatdispatch"]


def test_a_cache_folder_another_user_made_inside_the_victims_base_is_not_read(world: dict) -> None:
    """The victim's own cache base (theirs, 0755 today) holds a `fatdispatch` folder another user made while the
    base was open to others, with the victim's own valid pick inside: the reader refuses that folder as the
    writer does, so the import is no hit, and nothing is written there."""
    victim, attacker = world["victim"], world["attacker"]
    cache = owned_dir(world["root"] / "cache11", victim, 0o755)
    env = {"HOME": str(cache), "XDG_CACHE_HOME": str(cache)}
    assert not state(world, VICTIM, env)["hit"]
    assert state(world, VICTIM, env)["hit"]  # the victim's valid pick
    made = cache / "fatdispatch"
    os.chown(made, attacker.pw_uid, attacker.pw_gid)
    made.chmod(0o777)
    before = snapshot(made / "picks-v3")
    for _ in range(2):
        out = state(world, VICTIM, env)
        assert out["ok"] and not out["hit"]
    assert snapshot(made / "picks-v3") == before
