"""The BPF ring buffer read through its mmap'd pages: records in batches, no callback per record.

The kernel's layout (kernel/bpf/ringbuf.c): page 0, the consumer position (user space writes it);
page 1, the producer position; then the data pages, mapped twice in a row so that a record that
wraps around the end reads as one piece. Each record has an 8-byte header: its length, with the
BUSY bit while the producer is still writing it and the DISCARD bit for a discarded one, then the
payload, padded to 8 bytes.

The positions are read and written as whole aligned 8-byte words (a native memoryview item), never
through `struct` with an explicit byte order: CPython packs those a byte at a time, and the kernel
reading a half-written consumer position sees it up to the ring's size behind (at every wrap of a
16 MiB ring: 0x00FFFFF8 -> 0x00000010 -> 0x01000010) and refuses records for a full ring that is empty.
"""

from __future__ import annotations

import mmap
import select
import struct

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_u32 = struct.Struct("=I")  # native, aligned: one load


class RingBuffer:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map of `size` bytes (a power-of-two number of pages)."""

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._producer)[page:]
        self._cons = memoryview(self._consumer).cast("Q")  # [0]: one aligned 8-byte load or store
        self._prod = memoryview(self._producer).cast("Q")
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self.bytes_read = 0  # ring bytes consumed (record headers and padding included)
        self.wakeups = 0  # times the reader slept and was woken or timed out

    def available(self) -> int:
        """Bytes the producer wrote that are not consumed yet."""
        return self._prod[0] - self._cons[0]

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel wakes the reader or the timeout ends (at once if data waits)."""
        if timeout_ms and not self.available():
            self.wakeups += 1
            try:
                self._epoll.poll(timeout_ms / 1000)
            except InterruptedError:
                pass

    def read(self, max_records: int) -> list[bytes]:
        """Up to `max_records` committed records, oldest first, copied out of the ring."""
        start = consumer = self._cons[0]
        producer = self._prod[0]
        data = self._data
        mask = self._mask
        out = []
        append = out.append
        unpack = _u32.unpack_from
        while consumer < producer and len(out) < max_records:
            at = consumer & mask
            (length,) = unpack(data, at)
            if length & BUSY:
                break  # the producer has not committed it yet; records after it wait too
            if not length & DISCARD:
                append(bytes(data[at + HEADER:at + HEADER + length]))
            length &= ~(BUSY | DISCARD)
            consumer += (length + HEADER + 7) & ~7
        if consumer != start:
            self.bytes_read += consumer - start
            self._cons[0] = consumer
        return out

    def close(self) -> None:
        self._epoll.close()
        self._data.release()
        self._cons.release()
        self._prod.release()
        self._producer.close()
        self._consumer.close()
