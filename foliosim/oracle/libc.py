"""The few system calls the host oracle needs, through libc with ctypes (x86-64 Linux).

Each wrapper returns the result or raises :class:`SysError` carrying the errno name, so the
oracle can compare it with the model's ``errno`` word.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os

PROT = {"none": 0, "r": 1, "rw": 3, "rx": 5, "rwx": 7}
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_POPULATE = 0x8000
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
POSIX_FADV_DONTNEED = 4
PR_SET_CHILD_SUBREAPER = 36

ADVICE = {
    "NORMAL": 0,
    "WILLNEED": 3,
    "DONTNEED": 4,
    "FREE": 8,
    "HUGEPAGE": 14,
    "NOHUGEPAGE": 15,
    "COLD": 20,
    "PAGEOUT": 21,
    "COLLAPSE": 25,
    "GUARD_INSTALL": 102,
    "GUARD_REMOVE": 103,
}

MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mprotect = _libc.mprotect
_mprotect.restype = ctypes.c_int
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_mremap = _libc.mremap
_mremap.restype = ctypes.c_void_p
_mremap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_void_p,
]
_fallocate = _libc.fallocate
_fallocate.restype = ctypes.c_int
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class SysError(Exception):
    """A system call failed; ``name`` is the errno name (EINVAL, ENOMEM, ...)."""

    def __init__(self, err: int) -> None:
        self.err = err
        self.name = errno_mod.errorcode.get(err, str(err))
        super().__init__(f"{self.name}: {os.strerror(err)}")


def _check(ret: int) -> int:
    if ret < 0:
        raise SysError(ctypes.get_errno())
    return ret


def mmap(addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    ctypes.set_errno(0)
    ret = _mmap(addr or None, length, prot, flags, fd, off)
    if ret is None or ret == MAP_FAILED:
        raise SysError(ctypes.get_errno())
    return int(ret)


def munmap(addr: int, length: int) -> None:
    _check(_munmap(addr, length))


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(_mprotect(addr, length, prot))


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_madvise(addr, length, advice))


def mremap(addr: int, old: int, new: int, flags: int, new_addr: int) -> int:
    ctypes.set_errno(0)
    ret = _mremap(addr, old, new, flags, new_addr or None)
    if ret is None or ret == MAP_FAILED:
        raise SysError(ctypes.get_errno())
    return int(ret)


def punch_hole(fd: int, off: int, length: int) -> None:
    _check(_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length))


def set_child_subreaper() -> None:
    _check(_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


def touch_read(addr: int) -> int:
    """Load one byte at addr (a real user-mode access: a fault here is a real page fault)."""
    return ctypes.c_ubyte.from_address(addr).value


def touch_write(addr: int, value: int = 0x5A) -> None:
    """Store one non-zero byte at addr."""
    ctypes.c_ubyte.from_address(addr).value = value
