"""Per-user private folders: created and opened without following symlinks, this user's, writable by nobody
else; files written atomically, pruned only among our own entries.  The pick cache and the GPU cache write
through this module (the import path reads with :func:`_fatdispatch.read_private`)."""

import _thread
import os
import time

from _fatdispatch import CACHE_DIR, cache_bases

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class Unusable(OSError):
    """A per-user cache folder that must not be used; the message says why."""


def _open_dir(name: "str", dir_fd: "int | None", create: "bool", follow: "bool", private: "bool") -> "int":
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | (0 if follow else _O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, flags, dir_fd=dir_fd)
        os.fchmod(fd, 0o700)  # whatever the umask
    st = os.fstat(fd)
    bad = None
    if st.st_uid != os.geteuid():
        bad = f"it belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
    elif st.st_mode & (0o077 if private else 0o022):
        bad = f"its mode {st.st_mode & 0o777:o} lets others {'in' if private else 'write'}"
    if bad is not None:
        os.close(fd)
        raise Unusable(f"{name}: {bad}")
    return fd


def open_private_dir(env: "Mapping[str, str]", sub: "str", create: "bool") -> "tuple[int, str]":
    """Open ``<base>/fatdispatch/<sub>`` in the first usable base of :func:`cache_bases`; a directory fd and
    its path.  Created 0700 if ``create``.  The base may be a symlink (users move ``~/.cache``), but must be
    this user's and writable by nobody else; ``fatdispatch`` and ``sub`` are opened without following
    symlinks and must be private.  A missing base is only created where its parent is this user's (root
    running with another user's ``HOME`` writes nothing there).  Raises :class:`OSError` saying why not."""
    problems = []
    for base, private in cache_bases(env):
        fds: "list[int]" = []
        try:
            try:
                fds.append(_open_dir(base, None, False, True, private))
            except FileNotFoundError:
                parent = os.path.dirname(base)
                if not create or private or os.stat(parent).st_uid != os.geteuid():
                    raise
                fds.append(_open_dir(base, None, True, True, private))
            fds.append(_open_dir(CACHE_DIR, fds[-1], create, False, True))
            fds.append(_open_dir(sub, fds[-1], create, False, True))
            fd = fds.pop()
            return fd, os.path.join(base, CACHE_DIR, sub)
        except OSError as exc:
            problems.append(f"{base}: {exc.strerror or exc}" if not isinstance(exc, Unusable) else f"{base}/{exc}")
        finally:
            for d in fds:
                os.close(d)
    raise Unusable("; ".join(problems) or "no cache folder: neither XDG_CACHE_HOME nor HOME is an absolute path")


def write_private(dir_fd: "int", name: "str", data: "bytes") -> "None":
    """Replace ``name`` atomically with ``data`` (0600), leaving no temporary file behind on failure."""
    tmp = f".{name}.{os.getpid()}.{_thread.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def remove_private(dir_fd: "int", name: "str") -> "None":
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def prune_private(dir_fd: "int", is_entry: "Callable[[str], bool]", keep: "int") -> "None":
    """Keep the ``keep`` newest of our entries (``is_entry(name)``) in an open private folder, and remove our
    temporary files older than an hour (a writer that died); never anything else."""
    entries = []
    now = time.time_ns()
    for e in os.scandir(dir_fd):
        tmp = e.name.startswith(".") and e.name.endswith(".tmp")
        if not (tmp or is_entry(e.name)):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_mode & 0o170000) != 0o100000 or st.st_uid != os.geteuid():
            continue
        if tmp:
            if now - st.st_mtime_ns > 3600 * 10**9:
                remove_private(dir_fd, e.name)
        else:
            entries.append((st.st_mtime_ns, e.name))
    if len(entries) > keep:
        entries.sort(reverse=True)
        for _, name in entries[keep:]:
            remove_private(dir_fd, name)
