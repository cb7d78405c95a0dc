"""Mount and unmount overlayfs stacks of snapshot directories.

The mount(2) syscall is called through libc (ctypes): about 0.2 ms, against several
ms to fork mount(8). Its option string must fit in one page, which caps absolute
lowerdir paths at a few dozen layers. Past that, the new mount API adds lowers one
by one (`lowerdir+`, Linux 6.8) with no length limit; on older kernels, like
containerd, the paths are made relative to their common parent and mount(8) runs in
a child whose working directory is that parent (chdir in this threaded process
would be unsafe).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
from pathlib import Path

from shared.errors import Conflict, InvalidArgument, NotFound

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_PAGE_SIZE = os.sysconf("SC_PAGESIZE")
# An upper that write_layer can read on its own: no index bookkeeping, no
# redirects or metadata-only copies pointing back into the lower layers.
_RW_OPTIONS = "index=off,redirect_dir=off,metacopy=off"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        source.encode() if source is not None else None,
        os.fsencode(target),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data is not None else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _check_path(p: Path) -> str:
    s = os.fspath(p)
    # The option parser splits on ',' and lowerdir on ':'; refusing beats escaping.
    if any(c in s for c in ",:\\\n"):
        raise InvalidArgument(f"overlay path {s!r} contains a reserved character")
    return s


def _options(lowers: list[str], upper: str | None, work: str | None) -> str:
    opts = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        opts += f",upperdir={upper},workdir={work},{_RW_OPTIONS}"
    return opts


def distinct_lowers(lowers: list[Path]) -> list[Path]:
    """`lowers` (top first) with each directory only at its topmost place.

    An image may hold the same layer twice (two identical COPYs in a row), but
    overlayfs refuses a lower listed twice (ELOOP). Dropping the lower copy keeps
    the view: every path the duplicate could answer, its upper twin answers first.
    """
    seen: set[str] = set()
    out = []
    for p in lowers:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def mount_overlay(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount a writable overlay on `target`: `lowers` top first, changes go to `upper`."""
    if not lowers:
        raise InvalidArgument("an overlay needs at least one lower directory")
    lowers = distinct_lowers(lowers)
    _mount_stack([_check_path(p) for p in lowers], _check_path(upper), _check_path(work), target)


def mount_readonly(lowers: list[Path], target: Path) -> None:
    """Mount a read-only view of `lowers` (top first) on `target`."""
    if not lowers:
        raise InvalidArgument("a read-only view needs at least one layer")
    lowers = distinct_lowers(lowers)
    if len(lowers) == 1:
        # overlayfs wants two lowers without an upper; one layer is a read-only bind mount.
        src = _check_path(lowers[0])
        _mount(src, os.fspath(target), None, MS_BIND, None)
        try:
            _mount(None, os.fspath(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        except BaseException:
            unmount(target, detach=True)
            raise
        return
    _mount_stack([_check_path(p) for p in lowers], None, None, target)


def _mount_stack(lowers: list[str], upper: str | None, work: str | None, target: Path) -> None:
    opts = _options(lowers, upper, work)
    if len(opts) < _PAGE_SIZE:
        _mount("overlay", os.fspath(target), "overlay", 0, opts)
        return
    try:
        _fsconfig_mount(lowers, upper, work, target)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    _relative_mount(lowers, upper, work, target)


def _relative_mount(lowers: list[str], upper: str | None, work: str | None, target: Path) -> None:
    paths = lowers + ([upper, work] if upper is not None and work is not None else [])
    base = os.path.commonpath([os.path.abspath(p) for p in paths])
    rel = [os.path.relpath(os.path.abspath(p), base) for p in paths]
    n = len(lowers)
    short = _options(rel[:n], rel[n] if upper is not None else None, rel[n + 1] if upper is not None else None)
    if len(short) >= _PAGE_SIZE:
        raise InvalidArgument(f"{n} layers do not fit in an overlay mount (options over {_PAGE_SIZE} bytes)")
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", short, os.path.abspath(target)],
        cwd=base, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise OSError(errno.EINVAL, f"mount overlay on {target}: {proc.stderr.strip()}")


_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432  # same on all arches
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100


def _syscall(nr: int, *args) -> int:
    rc = _libc.syscall(nr, *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _fsconfig_mount(lowers: list[str], upper: str | None, work: str | None, target: Path) -> None:
    """The new mount API: one `lowerdir+` per layer, so no page-size limit."""
    c = ctypes
    fs_fd = _syscall(_SYS_FSOPEN, c.c_char_p(b"overlay"), c.c_uint(1))  # FSOPEN_CLOEXEC
    try:
        def set_string(key: str, value: str) -> None:
            _syscall(_SYS_FSCONFIG, c.c_int(fs_fd), c.c_uint(_FSCONFIG_SET_STRING),
                     c.c_char_p(key.encode()), c.c_char_p(os.fsencode(value)), c.c_int(0))

        for lower in lowers:
            set_string("lowerdir+", lower)
        if upper is not None and work is not None:
            set_string("upperdir", upper)
            set_string("workdir", work)
            for opt in _RW_OPTIONS.split(","):
                key, _, value = opt.partition("=")
                set_string(key, value)
        _syscall(_SYS_FSCONFIG, c.c_int(fs_fd), c.c_uint(_FSCONFIG_CMD_CREATE), None, None, c.c_int(0))
        mnt_fd = _syscall(_SYS_FSMOUNT, c.c_int(fs_fd), c.c_uint(1), c.c_uint(0))  # FSMOUNT_CLOEXEC
        try:
            _syscall(_SYS_MOVE_MOUNT, c.c_int(mnt_fd), c.c_char_p(b""), c.c_int(_AT_FDCWD),
                     c.c_char_p(os.fsencode(os.path.abspath(target))), c.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def unmount(target: Path, *, detach: bool = False) -> None:
    """Unmount `target`; NotFound if nothing is mounted there, Conflict if busy."""
    rc = _libc.umount2(os.fsencode(os.fspath(target)), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            raise NotFound(f"nothing mounted on {target}")
        if err == errno.EBUSY:
            raise Conflict(f"{target} is busy")
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def is_mounted(target: Path) -> bool:
    return os.path.ismount(target)
