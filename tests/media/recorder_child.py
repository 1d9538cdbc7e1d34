"""Records deterministic frames until it is killed (the crash-recovery test runs it).

Usage: python recorder_child.py ROOT DATABASE WRITER (thread or process). After each flush it prints the sequence
number of the last frame written before the flush: every frame up to it is durable.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from watchkeep.media import Frame, Recorder

CAMERA = "crash-cam"
BASE = 1_700_000_000.0


def crash_frame(sequence: int) -> Frame:
    payload = hashlib.sha256(b"%d" % sequence).digest() * (40 + sequence % 97)
    return Frame(CAMERA, sequence, BASE + sequence * 0.01, payload)


async def record(root: str, database: str, writer: str) -> None:
    assert writer in ("thread", "process")
    recorder = Recorder(
        root,
        database,
        segment_seconds=0.5,
        flush_interval=0.2,
        writer=writer,  # type: ignore[arg-type]
    )
    await recorder.open()
    sequence = 0
    while True:
        for _ in range(10):
            recorder.write(crash_frame(sequence))
            sequence += 1
        if sequence % 100 == 0:
            await recorder.flush()
            print(sequence - 1, flush=True)
        else:
            # Let the writer thread run on its own too: the kill may land anywhere.
            await asyncio.sleep(0.001)


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1], sys.argv[2], sys.argv[3]))
