"""The io_uring the recorder writes through: every byte where it belongs, errors per job.

Files are read back with plain reads; nothing here trusts the ring's own counts alone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchkeep.media._uring import WriteRing, buffer_address


@pytest.fixture
def ring() -> Iterator[WriteRing]:
    # A small ring, so that a batch larger than it goes in several submissions.
    ring = WriteRing.open(entries=64)
    if ring is None:
        pytest.skip("no io_uring here (kernel, seccomp or kernel.io_uring_disabled)")
    yield ring
    ring.close()


def test_every_write_lands_at_its_offset_in_its_file(ring: WriteRing, tmp_path: Path) -> None:
    fds = []
    expected = []
    jobs = []
    for n in range(300):
        path = tmp_path / f"f{n}"
        prefix = b"p" * (n % 7)
        path.write_bytes(prefix)
        fd = os.open(path, os.O_WRONLY)
        fds.append(fd)
        picture = os.urandom(20_000 + n)
        tail = bytearray(b"end%d" % n)
        buffers = [b"head%d|" % n, picture, tail, memoryview(bytearray(b"xyz"))[1:]]
        jobs.append((fd, buffers, len(prefix)))
        expected.append(prefix + b"head%d|" % n + picture + bytes(tail) + b"yz")
    try:
        results = ring.writev_many(jobs)
    finally:
        for fd in fds:
            os.close(fd)
    assert results == [len(e) - n % 7 for n, e in enumerate(expected)]
    for n, data in enumerate(expected):
        assert (tmp_path / f"f{n}").read_bytes() == data


def test_jobs_the_ring_cannot_take_are_left_to_the_caller(ring: WriteRing, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        results = ring.writev_many(
            [
                (fd, [memoryview(b"read-only view")], 0),  # no address to hand the kernel
                (fd, [b"x"] * 1025, 0),  # more buffers than a writev takes
                (fd, [], 0),
                (fd, [b"written"], 0),
            ]
        )
    finally:
        os.close(fd)
    assert results == [-errno.EOPNOTSUPP] * 3 + [7]
    assert (tmp_path / "f").read_bytes() == b"written"


def test_a_failed_write_is_its_own_errno_and_the_others_go_through(
    ring: WriteRing, tmp_path: Path
) -> None:
    good = os.open(tmp_path / "good", os.O_WRONLY | os.O_CREAT, 0o600)
    (tmp_path / "read-only").write_bytes(b"")
    read_only = os.open(tmp_path / "read-only", os.O_RDONLY)
    closed = os.open(tmp_path / "closed", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(closed)
    try:
        results = ring.writev_many(
            [(read_only, [b"no"], 0), (closed, [b"no"], 0), (good, [b"yes"], 0)]
        )
    finally:
        os.close(good)
        os.close(read_only)
    assert results == [-errno.EBADF, -errno.EBADF, 3]
    assert (tmp_path / "good").read_bytes() == b"yes"
    assert (tmp_path / "read-only").read_bytes() == b""


def test_page_cache_advice_goes_in_one_call(ring: WriteRing, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, os.urandom(1 << 20))
        os.fsync(fd)
        results = ring.fadvise_many(
            [(fd, 0, 1 << 20, os.POSIX_FADV_DONTNEED), (-1, 0, 4096, os.POSIX_FADV_DONTNEED)]
        )
    finally:
        os.close(fd)
    # Kernels before 5.6 do not know the operation: EINVAL, and the caller uses the call.
    assert results[0] in (0, -errno.EINVAL)
    assert results[1] in (-errno.EBADF, -errno.EINVAL)


def test_addresses_are_those_of_the_bytes_themselves() -> None:
    import ctypes

    data = os.urandom(64)
    address = buffer_address(data)
    assert address is not None
    assert ctypes.string_at(address, len(data)) == data
    writable = bytearray(b"abcdef")
    address = buffer_address(memoryview(writable)[2:])
    assert address is not None
    assert ctypes.string_at(address, 4) == b"cdef"
    assert buffer_address(memoryview(b"read-only")) is None


def test_a_system_that_refuses_submissions_gets_no_ring(
    ring: WriteRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some seccomp profiles allow io_uring_setup and refuse io_uring_enter: the caller must
    # then hear "no ring" at once, not fail at its first write.
    import ctypes

    def refused(*_args: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1

    real_init = WriteRing.__init__

    def init(self: WriteRing, fd: int, offsets: object, enter: object) -> None:
        real_init(self, fd, offsets, refused)  # type: ignore[arg-type]

    monkeypatch.setattr(WriteRing, "__init__", init)
    assert WriteRing.open() is None
