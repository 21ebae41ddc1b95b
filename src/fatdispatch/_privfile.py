"""Per-user private folders: created and opened without following symlinks, this user's, writable by nobody
else; files written atomically, pruned only among our own entries.  The pick cache and the GPU cache write
through this module (the import path reads with :func:`_fatdispatch.read_private`)."""

import _thread
import os
import time

from _fatdispatch import CACHE_DIR, cache_bases, open_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Unusable(OSError):
    """A per-user cache folder that must not be used; the message says why."""


def _open_dir(name: "str", dir_fd: "int | None", create: "bool", follow: "bool", private: "bool") -> "int":
    """A cache folder opened and checked by :func:`_fatdispatch.open_dir` (the rule the import path's reader
    applies too), made 0700 first where it is missing and ``create``.  A folder found in its place after
    ``mkdir`` is checked like any other, never fixed up."""
    try:
        fd, bad = open_dir(name, dir_fd, follow, private)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd, bad = open_dir(name, dir_fd, follow, private)
    if bad is not None:
        raise Unusable(f"{name}: {bad}")
    return fd


def _open_base(base: "str", private: "bool", own: "bool", create: "bool") -> "int":
    """A cache base opened and checked; where it is missing and ``create``, made 0700 if it is fatdispatch's own
    temporary folder, or a home base whose parent is this user's (never a runtime folder).  A home base is
    written (``create``) only where its parent is this user's or root's: in another user's folder that user
    decides what the name is (a link to any folder of ours, such as root's ``/etc`` for root run with their
    ``HOME``), so nothing is written there."""
    parent_uid = None
    if create and not own and not private:  # a home base to write in
        parent = os.path.dirname(base)
        parent_uid = os.stat(parent).st_uid
        if parent_uid not in (os.geteuid(), 0):
            raise Unusable(f"{base}: its folder {parent} is uid {parent_uid}'s, so that user decides what this "
                           "name is: nothing is written there")
    try:
        return _open_dir(base, None, False, not own, private)
    except FileNotFoundError:
        if not create or not (own or parent_uid == os.geteuid()):
            raise
    os.mkdir(base, 0o700)  # then checked like any folder found there
    return _open_dir(base, None, False, not own, private)


def _open_chain(base: "str", private: "bool", own: "bool", sub: "str", create: "bool",
                accept: "Callable[[int, str], None] | None") -> "tuple[int, str]":
    """``<base>/fatdispatch/<sub>`` opened and checked, as :func:`open_private_dir` says; :class:`OSError` why not."""
    fds = [_open_base(base, private, own, create)]
    try:
        if accept is not None:
            accept(fds[-1], base)  # before anything is made inside a base it refuses
        fds.append(_open_dir(CACHE_DIR, fds[-1], create, False, True))
        fds.append(_open_dir(sub, fds[-1], create, False, True))
        return fds.pop(), os.path.join(base, CACHE_DIR, sub)
    finally:
        for d in fds:
            os.close(d)


def _problem(base: "str", exc: "OSError") -> "str":
    if isinstance(exc, Unusable):  # about the base itself, or a folder of the chain named from it
        return str(exc) if str(exc).startswith(f"{base}:") else f"{base}/{exc}"
    where = base if exc.filename in (None, base) else f"{base} ({exc.filename})"  # the chain's folder it is about
    return f"{where}: {exc.strerror or exc}"


def open_private_dir(env: "Mapping[str, str]", sub: "str", create: "bool",
                     accept: "Callable[[int, str], None] | None" = None) -> "tuple[int, str]":
    """Open ``<base>/fatdispatch/<sub>`` in the first usable base of :func:`cache_bases`; a directory fd and
    its path.  Created 0700 if ``create``.  The home base may be a symlink (users move ``~/.cache``), but must
    be this user's and writable by nobody else; ``fatdispatch`` and ``sub`` are opened without following
    symlinks and must be private.  A missing home base is only created where its parent is this user's, and
    one found is only written where its parent is this user's or root's (root running with another user's
    ``HOME`` writes nothing there, nor where their ``~/.cache`` link points); ``XDG_RUNTIME_DIR`` is never
    created; the last base, fatdispatch's own ``$TMPDIR/fatdispatch-<euid>``, is created 0700 and never
    reached through a symlink, so another user who made that name first only leaves it unused.
    ``accept(fd, base)``, where given, may refuse a base that passed (raising :class:`OSError`) before
    anything is made in it, and the next base is tried.  Raises :class:`OSError` saying why not."""
    problems = []
    for base, private, own in cache_bases(env):
        try:
            return _open_chain(base, private, own, sub, create, accept)
        except OSError as exc:
            problems.append(_problem(base, exc))
    raise Unusable("; ".join(problems) or "no cache folder: neither XDG_CACHE_HOME nor HOME is an absolute path")


def remove_everywhere(env: "Mapping[str, str]", sub: "str", name: "str") -> "None":
    """Remove our file ``name`` from ``<base>/fatdispatch/<sub>`` in every usable base that has that folder
    (creating nothing): a reader takes the first base holding an entry, which need not be the first base."""
    for base, private, own in cache_bases(env):
        try:
            fd, _ = _open_chain(base, private, own, sub, False, None)
        except OSError:
            continue
        try:
            remove_private(fd, name)
        finally:
            os.close(fd)


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
