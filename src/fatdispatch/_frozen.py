"""Frozen applications from the outside: Nuitka's command line for a fat package, and running a PyInstaller
one-folder app under qemu-user.  Pure functions over paths and plain data, used by ``python -m fatdispatch
nuitka-args`` and ``test-variants --qemu``."""

import os
from typing import Mapping, Sequence

# Modules the import path loads lazily (by name, so a freezer's import analysis cannot see them) and the data the
# full path reads; the same list the PyInstaller hook collects.
NUITKA_ALWAYS = ["--include-module=_fatdispatch", "--include-package=fatdispatch",
                 "--include-package-data=fatdispatch", "--nofollow-import-to=fatdispatch.build",
                 "--nofollow-import-to=fatdispatch._pyinstaller"]


def nuitka_args(package: "str", fat_modules: "Mapping[str, str]") -> "list[str]":
    """Nuitka options that carry every build of ``package``'s fat modules (``fat_modules``: module -> its
    installed ``<module>.variants`` folder, as ``fatdispatch.fat_modules()`` gives).

    ``--include-raw-dir`` copies the folder as it is; ``--include-data-dir`` would silently leave out the builds
    (Nuitka drops ``.so`` files from data folders), keeping only ``manifest.json``."""
    dirs = []
    for module, folder in sorted(fat_modules.items()):
        if module.split(".")[0] != package:
            continue
        dest = "/".join([*module.split(".")[:-1], os.path.basename(folder)])
        dirs.append(f"--include-raw-dir={folder}={dest}")
    if not dirs:
        raise LookupError(f"{package} has no installed fat modules (fatdispatch found: "
                          f"{', '.join(sorted(fat_modules)) or 'none'}); install it in this environment first")
    return [f"--include-package={package}", *NUITKA_ALWAYS, *dirs]


def pyinstaller_onedir_env(exe: "str", env: "Mapping[str, str]") -> "dict[str, str] | None":
    """The variables a PyInstaller (6.x, Linux) one-folder launcher sets before it re-executes itself, or None
    if ``exe`` is not such a launcher.

    The launcher's first run only sets ``LD_LIBRARY_PATH`` to its ``_internal`` folder and ``execve``s itself;
    qemu-user does not follow an ``execve`` (the kernel runs the new image natively), so under ``qemu-x86_64
    -cpu Nehalem`` the app would run on the real CPU.  Handing these to the guest with ``-E`` makes the first
    run the real one.  (A one-file app unpacks and starts a child as well: test a one-folder build under qemu.)"""
    exe = os.path.abspath(exe)
    internal = os.path.join(os.path.dirname(exe), "_internal")
    if not os.path.isdir(internal) or not _is_pyinstaller_launcher(exe):
        return None
    lib = env.get("LD_LIBRARY_PATH")
    return {"_PYI_ARCHIVE_FILE": exe, "_PYI_PARENT_PROCESS_LEVEL": "-1",
            "_PYI_LINUX_PROCESS_NAME": os.path.basename(exe)[:15],
            "LD_LIBRARY_PATH": internal + (os.pathsep + lib if lib else "")}


def _is_pyinstaller_launcher(path: "str") -> "bool":
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head != b"\x7fELF":
                return False
            return b"_PYI_ARCHIVE_FILE" in f.read(4 << 20)  # the bootloader's own code, near the start
    except OSError:
        return False


def qemu_prefix(qemu: "str", model: "str", command: "Sequence[str]", env: "Mapping[str, str]") -> "list[str]":
    """``qemu-x86_64 -cpu MODEL`` with ``-E`` for each variable a frozen launcher in ``command[0]`` would set
    when it re-executes itself (see :func:`pyinstaller_onedir_env`)."""
    prefix = [qemu, "-cpu", model]
    extra = pyinstaller_onedir_env(command[0], env) if command else None
    for key, value in (extra or {}).items():
        prefix += ["-E", f"{key}={value}"]
    return prefix
