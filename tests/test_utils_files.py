"""Atomic writes: the process umask is left alone, the file is durable before it
replaces the old one, and a failed write leaves the old file and no temporary."""

from __future__ import annotations

import os
import stat
from unittest import mock

import pytest

from captum_influence_patterns.utils import files
from captum_influence_patterns.utils.files import write_bytes_atomic, write_json_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_umask_is_unchanged_and_the_mode_follows_it(tmp_path, mask):
    previous = os.umask(mask)
    try:
        path = tmp_path / "out.json"
        write_json_atomic(path, {"a": 1})
        assert _umask() == mask
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
        plain = tmp_path / "plain"
        with open(plain, "w"):
            pass
        assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(
            os.stat(plain).st_mode
        )
    finally:
        os.umask(previous)


def test_no_umask_call_at_all(tmp_path):
    """The umask is process-wide: changing it even briefly races other threads."""
    with mock.patch.object(os, "umask", side_effect=AssertionError("umask")):
        write_json_atomic(tmp_path / "out.json", [1, 2])


def test_fsync_happens_before_replace(tmp_path):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    with mock.patch.object(files.os, "fsync", fsync), mock.patch.object(
        files.os, "replace", replace
    ):
        write_bytes_atomic(tmp_path / "out.bin", lambda handle: handle.write(b"x"))
    assert events == ["fsync", "replace"]
    assert (tmp_path / "out.bin").read_bytes() == b"x"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fails(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_bytes_atomic(path, fails)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
