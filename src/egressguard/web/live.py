"""Live decisions as server-sent events (`GET /dashboard/live`).

Each stream polls the audit table for records newer than the last it sent (the gateway
may be another process: the database is the one place every decision lands). Bounded on
every side, so a browser tab left open, or a hostile client, costs little:

* at most `Limits.max_clients` streams per app (503 with `Retry-After` beyond);
* a poll reads at most `Limits.batch` records; a client that falls further behind is
  told how many it skipped (`event: gap`) instead of being replayed the backlog;
* back-pressure: the next poll waits until the previous chunk was handed to the socket,
  and a chunk the client does not take within `Limits.send_timeout` ends the stream;
* a comment line every `Limits.heartbeat` seconds keeps proxies from timing the stream
  out and finds dead clients; after `Limits.lifetime` the stream ends and the browser's
  `EventSource` reconnects with `Last-Event-ID` (which is honoured).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send


@dataclass(frozen=True)
class Limits:
    max_clients: int = 16
    batch: int = 100
    poll: float = 1.0
    heartbeat: float = 15.0
    send_timeout: float = 10.0
    lifetime: float = 300.0


class Slots:
    """A counter of open streams (shared by the API's threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.open -= 1


def frame(event: str, data: Any, ident: int | None = None) -> bytes:
    """One SSE message; the JSON never holds a raw newline, so it is one `data:` line."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def last_event_id(header: str | None) -> int | None:
    if header and header.isdigit() and len(header) <= 18:
        return int(header)
    return None


Fetch = Callable[[int, int], list[dict[str, Any]]]   # (after id, limit) -> records


async def stream(fetch: Fetch, newest: Callable[[], int], start: int, limits: Limits,
                 shape: Callable[[dict[str, Any]], dict[str, Any] | None]
                 ) -> AsyncIterator[bytes]:
    """Frames for every decision after `start`: `decision` events, `gap` when records were
    skipped (the client was more than a batch behind; it resumes at the newest record),
    heartbeat comments in between. A record `shape` maps to None is left out."""
    after = start
    yield b"retry: 3000\n\n" + frame("hello", {"after": after})
    began = last_beat = time.monotonic()
    while time.monotonic() - began < limits.lifetime:
        rows = await anyio.to_thread.run_sync(fetch, after, limits.batch + 1)
        if len(rows) > limits.batch:
            # Too far behind: skip to the newest record rather than replay a backlog.
            resume = max(after, await anyio.to_thread.run_sync(newest))
            yield frame("gap", {"skipped_after": after, "resume": resume}, resume)
            after, rows = resume, []
        shaped = [(shape(r), r["id"]) for r in rows]
        chunk = b"".join(frame("decision", s, i) for s, i in shaped if s is not None)
        if rows:
            after = rows[-1]["id"]
        if chunk:
            last_beat = time.monotonic()
            yield chunk
        elif time.monotonic() - last_beat >= limits.heartbeat:
            last_beat = time.monotonic()
            yield b": heartbeat\n\n"
        await anyio.sleep(limits.poll)


class LiveResponse(StreamingResponse):
    """A streaming response that holds one of `slots` while it runs and gives up on a
    client that stops reading (each send bounded by `send_timeout`)."""

    def __init__(self, content: AsyncIterator[bytes], slots: Slots, send_timeout: float
                 ) -> None:
        super().__init__(content, media_type="text/event-stream", headers={
            "Cache-Control": "no-store", "X-Accel-Buffering": "no",
            "X-Content-Type-Options": "nosniff"})
        self.slots = slots
        self.send_timeout = send_timeout

    async def stream_response(self, send: Send) -> None:
        async def bounded(message: Any) -> None:
            with anyio.fail_after(self.send_timeout):
                await send(message)

        try:
            await super().stream_response(bounded)
        except TimeoutError:
            return  # the client stopped reading: drop it (the server closes the socket)
        finally:
            self.slots.give()
