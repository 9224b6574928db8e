"""Writer identity and chain state that outlive one run: what anchors the audit chains.

Design (tamper evidence across runs, issue 10 item 7):

* **Stable writers.** A writer is `<host id>-<slot>`: the host id is random, created once in
  the data home; the slot is the lowest `writer-<n>.lock` (per store, under
  `<data home>/audit/<store hash>/`) this process can `flock`. Each run of a slot continues
  that writer's chain: seq goes on from the previous run's last batch and the first batch's
  `prev_mac` is that batch's MAC. Deleting a whole run therefore leaves a gap in seq.
  Hosts sharing a store have distinct host ids, so each keeps its own chains.
* **Heads.** `audit_heads` holds each writer's newest seq and MAC, with a MAC of its own,
  updated in the same transaction as every batch. Deleting the newest batches leaves the
  head pointing past them; deleting the head too is itself reported (a writer's batches
  without a head).
* **Local state.** After each durable batch the slot's `writer-<n>.state` file records
  its seq and MAC (not fsynced: it only ever lags the store). At the next start the writer
  resumes from the later of that file and the head row, so rolling the store back (old
  head row restored, newest batches deleted) shows as a gap as soon as the writer writes
  again.
* **Retention.** Pruning keeps, per writer, one MACed `audit_prunes` record: through which
  seq batches were removed, that batch's MAC and how many events. The oldest kept batch must
  follow it (seq + 1, `prev_mac` = that MAC), and a chain without one must start at seq 0
  from the genesis MAC: deleting the oldest batches that retention did not prune is caught.

What it cannot detect: anyone holding the audit key can forge everything. Without the key,
removing *every* trace of a writer (its batches, head and prune record) is not visible in
the store alone; it shows once that writer writes again (its state file resumes the chain
past the gap), or not at all if its data home is gone too. Restoring a genuine older head
row together with deleting the newest batches is detected only when that writer writes
again (see local state). Writers from before anchoring (16-hex random ids) have no head;
`logs verify` notes them and checks only their chain's interior, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
from pathlib import Path

from sqlalchemy.engine import URL, make_url

LEGACY_WRITER = re.compile(r"[0-9a-f]{16}")
GENESIS = b"\0" * 32  # the prev_mac of a chain's first batch
_HOST_FILE = "host-id"


def store_dir(url: str | URL) -> Path:
    """`<data home>/audit/<hash of the store URL>` (mode 0700): this store's writer files."""
    from egressguard.paths import data_home

    text = make_url(url).render_as_string(hide_password=True) if not isinstance(url, URL) \
        else url.render_as_string(hide_password=True)
    path = data_home() / "audit" / hashlib.sha256(text.encode()).hexdigest()[:16]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def host_id(audit_dir: Path) -> str:
    """This data home's random id (created once, atomically, mode 0600)."""
    path = audit_dir / _HOST_FILE
    if not path.exists():
        tmp = path.with_name(f".{_HOST_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(6).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # another process won the race: use its id
        tmp.unlink()
    return path.read_text().strip()


class Slot:
    """One writer slot held (flock) by this process: its id, state file and spool path."""

    def __init__(self, directory: Path) -> None:
        host = host_id(directory.parent)
        n = 0
        while True:
            fd = os.open(directory / f"writer-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                os.close(fd)
                n += 1
        self._fd = fd
        self.writer = f"{host}-{n}"
        self.state_path = directory / f"writer-{n}.state"
        self.spool_path = directory / f"writer-{n}.spool"
        self._state_fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT, 0o600)

    def last(self) -> tuple[int, bytes] | None:
        """(seq, MAC) of the last batch this slot made durable, if recorded."""
        try:
            seq, mac = os.pread(self._state_fd, 200, 0).split()[:2]
            return int(seq), bytes.fromhex(mac.decode())
        except ValueError:
            return None

    def remember(self, seq: int, mac: bytes) -> None:
        line = f"{seq} {mac.hex()}\n".encode().ljust(100)
        os.pwrite(self._state_fd, line, 0)

    def release(self) -> None:
        for fd in (self._state_fd, self._fd):
            with contextlib.suppress(OSError):
                os.close(fd)
