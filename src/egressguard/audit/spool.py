"""The local durable spool: sealed, chained batches kept while the store is unreachable.

One append-only file per writer slot (mode 0600, under the data home; see `lineage`).
Each frame is `length (4) | CRC-32 (4) | marshal(batch)` and is fdatasync'ed before the
writer acknowledges its events, so "durable before the 403" holds while the database is
down, without waiting for it. A torn last frame (a crash while appending) fails its CRC
and is ignored: it was never acknowledged. The spool is emptied only after every frame in
it is committed to the store; inserting a batch twice is harmless, because the store keys
batches by (writer, seq) and a present batch with the same MAC is skipped. The sealed
fields in the spool are exactly as in the store: under the batch's data key (wrapped by
the customer-managed key, whose header the frame carries) or the local audit key.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from pathlib import Path
from typing import Any

_HEAD = struct.Struct(">II")

# A spooled batch: (seq, prev_mac, mac, clears, payloads, key header). The header is the
# batch's wrapped data key (customer-managed key), or None: sealed under the local audit
# key. Frames spooled before headers existed have five members (read as None).
Batch = tuple[int, bytes, bytes, list[tuple[Any, ...]], list[bytes], bytes | None]


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(self._fd, 0o600)
        directory = os.open(path.parent, os.O_RDONLY)
        try:                     # the file's name is durable too, not only its contents
            os.fsync(directory)
        finally:
            os.close(directory)

    def append(self, batch: Batch) -> None:
        data = marshal.dumps(batch, 2)
        os.write(self._fd, _HEAD.pack(len(data), zlib.crc32(data)) + data)
        os.fdatasync(self._fd)

    def batches(self) -> list[Batch]:
        """Every whole frame, oldest first (a torn or corrupt tail is ignored)."""
        data = Path(self.path).read_bytes()
        out: list[Batch] = []
        at = 0
        while at + _HEAD.size <= len(data):
            size, crc = _HEAD.unpack_from(data, at)
            body = data[at + _HEAD.size:at + _HEAD.size + size]
            if len(body) < size or zlib.crc32(body) != crc:
                break
            batch = marshal.loads(body)
            out.append((*batch, None) if len(batch) == 5 else batch)
            at += _HEAD.size + size
        return out

    def empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
