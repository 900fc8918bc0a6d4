"""Permission bits that apply even to root (the tests run as root in CI)."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

import pytest

__all__ = ["permissions_enforced"]

# Tests run as root in CI, and root reads whatever the permission bits say (CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH). Dropping those two from this thread's effective set (forked decode
# workers inherit it) makes the bits apply; they stay permitted, so they are raised again after.
_CAP_VERSION_3 = 0x20080522
_DAC_CAPS = (1 << 1) | (1 << 2)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def permissions_enforced():
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip(f"running as root and capget failed (errno {ctypes.get_errno()}): permission bits cannot apply")
    saved = data[0].effective
    data[0].effective = saved & ~_DAC_CAPS
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE (errno {ctypes.get_errno()})")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0
