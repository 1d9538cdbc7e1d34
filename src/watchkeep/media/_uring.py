"""Many file operations in one system call: Linux's io_uring, driven through ctypes.

The recorder's writer thread shares the GIL with the event loop that receives and serves
the video. Each ``pwritev`` lets the GIL go, and the writer must then win it back from a
loop that seldom waits: at 450 cameras a batch of a quarter of a second is 450 of them,
and the batch took up to ten times as long as its writes (frames were dropped); so did
the page-cache releases (``posix_fadvise``) of a flush. A :class:`WriteRing` submits a
whole batch of vectored writes, or of releases, one per file, and waits for all of them in
one ``io_uring_enter(2)``, during which the GIL is free: one hand-over per batch instead
of one per camera.

Where io_uring is missing or refused (not Linux, a kernel before 5.6, a container whose
seccomp profile forbids ``io_uring_setup``, ``kernel.io_uring_disabled``),
:meth:`WriteRing.open` returns None and the caller writes with ``pwritev`` as before.

Memory safety: the kernel reads the buffers after the submitting call returned only if
that call failed to wait for them; every buffer of a submission stays referenced by the
ring until its completion is seen, and a ring that cannot see them any more keeps them
for good (it is marked broken and never used again) rather than let them be freed.
"""

from __future__ import annotations

import array
import ctypes
import errno
import mmap
import os
import struct
import sys
from collections.abc import Sequence

__all__ = ["AdviceJob", "WriteJob", "WriteRing", "buffer_address"]

# One vectored write: (file descriptor, buffers, file offset).
WriteJob = tuple[int, Sequence[bytes | bytearray | memoryview], int]
# One posix_fadvise: (file descriptor, offset, length (> 0), advice).
AdviceJob = tuple[int, int, int, int]
# A submission queue entry's fields that vary: opcode, fd, off, addr, len, op flags.
_Entry = tuple[int, int, int, int, int, int]

# The same numbers on every Linux architecture (the generic system call table).
_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_ENTER = 426
_OFF_SQ_RING = 0
_OFF_CQ_RING = 0x8000000
_OFF_SQES = 0x10000000
_FEAT_SINGLE_MMAP = 1 << 0
_FEAT_NODROP = 1 << 1
_ENTER_GETEVENTS = 1 << 0
_OP_NOP = 0
_OP_WRITEV = 2
_OP_FADVISE = 24  # Linux 5.6
_IOV_MAX = 1024  # UIO_MAXIOV: more buffers than this in one write are refused
_RETRIES = 1000  # interrupted or busy io_uring_enter calls for one submission, at most

_PARAMS_SIZE = 120
_U32 = struct.Struct("<I")
# struct io_uring_sqe: opcode, flags, ioprio, fd, off, addr, len, rw_flags, user_data,
# buf_index, personality, splice_fd_in, addr3, pad.
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
_CQE = struct.Struct("<QiI")  # user_data, res, flags


def _probe_bytes_offset() -> int | None:
    """Where a bytes object keeps its data, relative to id(): CPython's layout, checked
    against ctypes (the slow, portable way) before it is trusted."""
    if sys.implementation.name != "cpython":
        return None
    probes = [b"watchkeep", bytes(range(256)) * 80]
    offsets = {ctypes.cast(ctypes.c_char_p(p), ctypes.c_void_p).value - id(p) for p in probes}  # type: ignore[operator]
    return offsets.pop() if len(offsets) == 1 else None


_BYTES_DATA_OFFSET = _probe_bytes_offset()


def buffer_address(buffer: bytes | bytearray | memoryview) -> int | None:
    """The address of ``buffer``'s first byte, or None where it cannot be had safely."""
    if type(buffer) is bytes:
        if _BYTES_DATA_OFFSET is not None:
            return id(buffer) + _BYTES_DATA_OFFSET
        return ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value or None
    view = memoryview(buffer)
    if view.readonly or not view.c_contiguous or not view.nbytes:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class _Offsets:
    """The ring's layout, as io_uring_setup(2) reported it."""

    def __init__(self, raw: bytes) -> None:
        fields = struct.unpack_from("<10I", raw, 0)
        self.sq_entries, self.cq_entries, _flags, _cpu, _idle, self.features = fields[:6]
        sq = struct.unpack_from("<8I", raw, 40)
        self.sq_head, self.sq_tail, self.sq_mask_at, _entries, _f, _dropped, self.sq_array = sq[:7]
        cq = struct.unpack_from("<8I", raw, 80)
        self.cq_head, self.cq_tail, self.cq_mask_at, _entries, _overflow, self.cqes = cq[:6]


class WriteRing:
    """An io_uring for vectored writes and page-cache advice, used by one thread at a time."""

    def __init__(self, fd: int, offsets: _Offsets, enter: ctypes._CFuncPtr) -> None:  # type: ignore[name-defined]
        self._fd = fd
        self._o = offsets
        self._enter = enter
        self.entries = offsets.sq_entries
        sq_size = offsets.sq_array + offsets.sq_entries * 4
        cq_size = offsets.cqes + offsets.cq_entries * _CQE.size
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self._sq = mmap.mmap(fd, max(sq_size, cq_size), flags, rw, offset=_OFF_SQ_RING)
        self._cq = self._sq
        if not offsets.features & _FEAT_SINGLE_MMAP:
            self._cq = mmap.mmap(fd, cq_size, flags, rw, offset=_OFF_CQ_RING)
        self._sqes = mmap.mmap(fd, offsets.sq_entries * _SQE.size, flags, rw, offset=_OFF_SQES)
        self._sq_mask = _U32.unpack_from(self._sq, offsets.sq_mask_at)[0]
        self._cq_mask = _U32.unpack_from(self._cq, offsets.cq_mask_at)[0]
        # Buffers the kernel may still read: dropped only once their completions are seen.
        self._in_flight: list[object] = []
        self.broken: OSError | None = None

    @classmethod
    def open(cls, entries: int = 1024) -> WriteRing | None:
        """A new ring, or None where this system cannot give one."""
        if not sys.platform.startswith("linux") or _BYTES_DATA_OFFSET is None:
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            setup = libc["syscall"]
            enter = libc["syscall"]  # its own function object, with its own argtypes
        except (OSError, AttributeError):
            return None
        setup.restype = ctypes.c_long
        setup.argtypes = [ctypes.c_long, ctypes.c_uint, ctypes.c_char_p]
        enter.restype = ctypes.c_long
        enter.argtypes = [
            ctypes.c_long,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        params = ctypes.create_string_buffer(_PARAMS_SIZE)
        fd = setup(_SYS_IO_URING_SETUP, entries, params)
        if fd < 0:
            return None  # ENOSYS, EPERM (seccomp, io_uring_disabled), ENOMEM, ...
        offsets = _Offsets(params.raw)
        if not offsets.features & _FEAT_NODROP:  # a kernel before 5.5: not worth it
            os.close(fd)
            return None
        try:
            ring = cls(fd, offsets, enter)
        except (OSError, ValueError):
            os.close(fd)
            return None
        try:
            # A seccomp profile can allow the setup and refuse the submissions: try one.
            ring._run([(_OP_NOP, -1, 0, 0, 0, 0)], None)
        except OSError:
            ring._in_flight.clear()  # a NOP reads no memory of ours
            ring.close()
            return None
        return ring

    def close(self) -> None:
        if self._in_flight:
            return  # the kernel may still read them: keep the ring (and them) to the end
        for region in {id(m): m for m in (self._sq, self._cq, self._sqes)}.values():
            region.close()
        os.close(self._fd)

    def writev_many(self, jobs: Sequence[WriteJob]) -> list[int]:
        """Write every job; return, per job, the bytes written or a negative errno.

        A job that cannot go through the ring (too many buffers, a buffer without a
        stable address) is left to the caller with ``-errno.EOPNOTSUPP``. Raises OSError
        only if the ring itself fails (it is then :attr:`broken` for good).
        """
        iovecs = array.array("Q")
        entries: list[_Entry | None] = []
        for fd, buffers, offset in jobs:
            first = len(iovecs)
            if buffers and len(buffers) <= _IOV_MAX:
                for buffer in buffers:
                    address = buffer_address(buffer)
                    if address is None:
                        break
                    iovecs.append(address)
                    iovecs.append(len(buffer))
                else:
                    entries.append((_OP_WRITEV, fd, offset, first * 8, len(buffers), 0))
                    continue
            del iovecs[first:]
            entries.append(None)
        base = iovecs.buffer_info()[0]
        entries = [e and (e[0], e[1], e[2], base + e[3], e[4], e[5]) for e in entries]
        return self._run(entries, (iovecs, jobs))

    def fadvise_many(self, jobs: Sequence[AdviceJob]) -> list[int]:
        """``posix_fadvise`` every job; per job, 0 or a negative errno (as above)."""
        entries: list[_Entry | None] = [
            (_OP_FADVISE, fd, offset, 0, length, advice) if 0 < length < 1 << 32 else None
            for fd, offset, length, advice in jobs
        ]
        return self._run(entries, None)

    def _run(self, entries: list[_Entry | None], keep: object) -> list[int]:
        """Submit the entries (None: left to the caller) and wait for them all."""
        if self.broken is not None:
            raise self.broken
        results = [-errno.EOPNOTSUPP] * len(entries)
        todo = [(index, entry) for index, entry in enumerate(entries) if entry is not None]
        if todo:
            self._in_flight.append(keep)
            for start in range(0, len(todo), self.entries):
                self._submit_and_wait(todo[start : start + self.entries], results)
            self._in_flight.clear()
        return results

    def _submit_and_wait(self, todo: list[tuple[int, _Entry]], results: list[int]) -> None:
        sq, sqes, o = self._sq, self._sqes, self._o
        tail = _U32.unpack_from(sq, o.sq_tail)[0]
        for n, (index, (opcode, fd, offset, address, length, op_flags)) in enumerate(todo):
            slot = (tail + n) & self._sq_mask
            _SQE.pack_into(
                sqes, slot * _SQE.size,
                opcode, 0, 0, fd, offset, address, length, op_flags, index, 0, 0, 0, 0, 0,
            )  # fmt: skip
            _U32.pack_into(sq, o.sq_array + slot * 4, slot)
        # The kernel reads the tail after the system call's own barrier.
        new_tail = (tail + len(todo)) & 0xFFFFFFFF
        _U32.pack_into(sq, o.sq_tail, new_tail)
        waiting = len(todo)
        retries = 0
        while waiting:
            # What the kernel has not taken yet (after an interrupted call, some may be).
            to_submit = (new_tail - _U32.unpack_from(sq, o.sq_head)[0]) & 0xFFFFFFFF
            done = self._enter(
                _SYS_IO_URING_ENTER, self._fd, to_submit, waiting, _ENTER_GETEVENTS, None, 0
            )
            if done < 0:
                number = ctypes.get_errno()
                retries += 1
                if number not in (errno.EINTR, errno.EAGAIN, errno.EBUSY) or retries > _RETRIES:
                    self.broken = OSError(number, f"io_uring_enter: {os.strerror(number)}")
                    raise self.broken
            waiting -= self._reap(results)

    def _reap(self, results: list[int]) -> int:
        cq, o = self._cq, self._o
        head = _U32.unpack_from(cq, o.cq_head)[0]
        tail = _U32.unpack_from(cq, o.cq_tail)[0]
        seen = 0
        while head != tail:
            user_data, res, _flags = _CQE.unpack_from(
                cq, o.cqes + (head & self._cq_mask) * _CQE.size
            )
            results[user_data] = res
            head = (head + 1) & 0xFFFFFFFF
            seen += 1
        _U32.pack_into(cq, o.cq_head, head)
        return seen
