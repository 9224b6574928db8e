"""A seeded mutational fuzzer of HTTP/1.x requests for the hostile-input tests.

Seeds are valid requests and the request-smuggling classes (CL+TE, duplicate or odd
Content-Length, bad chunk sizes, obs-fold, bare LF, NUL, over-long lines, absolute vs
origin form, CONNECT variants). Smuggling seeds hide an origin-form request to
`/SMUGGLED` (which the gateway itself would refuse) where a parser that frames the
message differently would see a second request: if the origin ever parses it, the
gateway smuggled it. Same seed, same origin port: same inputs.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

INNER = b"GET /SMUGGLED HTTP/1.1\r\nHost: denied.test\r\n\r\n"
# Statuses the gateway may answer with: the origin's 200, a 403 refusal, client errors,
# and 502/504 for an allowed destination that is unreachable (a mutated port).
ALLOWED_STATUSES = {200, 403, 502, 504} | set(range(400, 500))
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def seeds(port: int) -> list[tuple[bytes, str]]:
    """(request bytes, what the gateway must do: ok, denied, bad or any)."""
    a = f"127.0.0.1:{port}".encode()
    get = b"GET http://%s/x HTTP/1.1\r\nHost: %s\r\n" % (a, a)
    post = b"POST http://%s/p HTTP/1.1\r\nHost: %s\r\n" % (a, a)
    chunk_inner = b"0\r\n\r\n" + INNER

    def body_cl(extra: bytes, body: bytes) -> bytes:
        return post + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body

    return [
        # valid
        (get + b"\r\n", "ok"),
        (get + b"Connection: close\r\n\r\n", "ok"),
        (body_cl(b"", b"hello=world"), "ok"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "ok"),
        # valid bodies that hold a request: forwarded as body, never as a request
        (body_cl(b"", INNER), "ok"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(INNER) + INNER
         + b"\r\n0\r\n\r\n", "ok"),
        (b"GET http://%s/old HTTP/1.0\r\n\r\n" % a, "ok"),
        (get + b"\r\n" + get + b"\r\n", "ok"),
        (b"HEAD http://%s/h HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "ok"),
        (get + b"Expect: 100-continue\r\n\r\n", "any"),
        (get + b"Connection: Upgrade, keep-alive\r\nUpgrade: websocket\r\n\r\n", "any"),
        (b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", "denied"),
        (b"GET http://10.9.8.7/ HTTP/1.1\r\nHost: 10.9.8.7\r\n\r\n", "denied"),
        # CL + TE, in both orders and obfuscated
        (post + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk_inner,
         "bad"),
        (post + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunk_inner,
         "bad"),
        (post + b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n" + chunk_inner,
         "bad"),
        (post + b"Transfer-Encoding : chunked\r\n\r\n" + chunk_inner, "bad"),
        (post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
         + chunk_inner, "any"),
        (post + b"Transfer-Encoding:\x0bchunked\r\n\r\n" + chunk_inner, "any"),
        (post + b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n\r\n"
         + chunk_inner, "bad"),
        # duplicate and odd Content-Length
        (post + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(INNER) + INNER,
         "bad"),
        (post + b"Content-Length: %d, 0\r\n\r\n" % len(INNER) + INNER, "bad"),
        (post + b"Content-Length: +%d\r\n\r\n" % len(INNER) + INNER, "bad"),
        (post + b"Content-Length: 0x%x\r\n\r\n" % len(INNER) + INNER, "bad"),
        (post + b"Content-Length: 99999999999999999999999\r\n\r\n" + INNER, "bad"),
        (post + b"Content-Length : %d\r\n\r\n" % len(INNER) + INNER, "bad"),
        # bad chunk sizes
        (post + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" + INNER, "bad"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + INNER, "bad"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + INNER,
         "bad"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", "any"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + INNER, "bad"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n" + INNER, "any"),
        # obs-fold, bare LF, bare CR, NUL
        (get + b"X-Folded: a\r\n b\r\n\r\n", "any"),
        (get + b" Content-Length: 5\r\n\r\nhello", "any"),
        (b"GET http://%s/x HTTP/1.1\nHost: %s\n\n" % (a, a), "any"),
        (b"GET http://%s/x HTTP/1.1\rHost: %s\r\r" % (a, a), "bad"),
        (get + b"X-Nul: a\x00b\r\n\r\n", "bad"),
        (b"GET http://%s/x\x00y HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "bad"),
        (b"G\x00T http://%s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "bad"),
        # over-long lines (the gateway under test caps heads at 8 KiB)
        (get + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n", "bad"),
        (b"GET http://%s/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, b"p" * 20000, a), "bad"),
        (get + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n", "bad"),
        # absolute vs origin form, Host consistency
        (b"GET /SMUGGLED HTTP/1.1\r\nHost: %s\r\n\r\n" % a, "bad"),
        (b"GET http://%s/x HTTP/1.1\r\nHost: denied.test\r\n\r\n" % a, "bad"),
        (b"GET http://%s/x HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n\r\n" % (a, a, a), "bad"),
        (b"GET http://%s/x HTTP/1.1\r\n\r\n" % a, "bad"),
        (b"GET https://%s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "bad"),
        (b"GET http://evil@%s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "any"),
        (b"GET http://%s@denied.test/x HTTP/1.1\r\nHost: denied.test\r\n\r\n" % a, "any"),
        (b"GET * HTTP/1.1\r\nHost: %s\r\n\r\n" % a, "bad"),
        (b"GET //%s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (a, a), "bad"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad"),
        (b"GET http://%s/x HTTP/1.2\r\nHost: %s\r\n\r\n" % (a, a), "any"),
        (b"GET http://%s/x\r\n\r\n" % a, "bad"),
        # CONNECT variants (never to the origin's port: a tunnel relays raw bytes)
        (b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n", "denied"),
        (b"CONNECT 10.9.8.7:443 HTTP/1.1\r\nHost: 10.9.8.7:443\r\n\r\n", "denied"),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "bad"),
        (b"CONNECT http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n", "bad"),
        (b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", "denied"),
        (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n", "bad"),
        (b"CONNECT denied.test:443 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(INNER)
         + INNER, "denied"),
        (get + b"\r\nCONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n",
         "ok"),
    ]


_TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",", b";", b"chunked",
           b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n",
           b"0\r\n\r\n", b"\xff", b"%00", b"99999999999999999999", b"\r\n ", b"Host: x\r\n",
           INNER, b"HTTP/1.1", b"CONNECT ", b"http://"]
_NUMBERS = [b"0", b"1", b"-1", b"4", b"65536", b"4294967296", b"18446744073709551616",
            b"0x10", b"ffffffff", b"007", b"1e3"]


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    op = rng.randrange(9)
    n = len(data)
    i = rng.randrange(n + 1)
    if op == 0 and n:                                        # replace a byte
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if op == 1:                                              # insert a token
        return data[:i] + rng.choice(_TOKENS) + data[i:]
    if op == 2 and n:                                        # delete a span
        return data[:i] + data[i + rng.randrange(1, 16):]
    lines = data.split(b"\r\n")
    if op == 3:                                              # duplicate a line
        k = rng.randrange(len(lines))
        lines.insert(k, lines[k])
        return b"\r\n".join(lines)
    if op == 4 and len(lines) > 2:                           # swap two lines
        x, y = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[x], lines[y] = lines[y], lines[x]
        return b"\r\n".join(lines)
    if op == 5:                                              # change a number
        numbers = list(re.finditer(rb"\d+", data))
        if numbers:
            m = rng.choice(numbers)
            return data[:m.start()] + rng.choice(_NUMBERS) + data[m.end():]
    if op == 6:                                              # splice two requests
        other = rng.choice(corpus)
        return data[:i] + other[rng.randrange(len(other) + 1):]
    if op == 7 and n:                                        # flip the case of a span
        j = min(n, i + rng.randrange(1, 12))
        return data[:i] + data[i:j].swapcase() + data[j:]
    return data[:i]                                          # truncate


def fuzz_inputs(seed: int, count: int, port: int) -> Iterator[tuple[bytes, str]]:
    """The seeds as they are, then mutants of them (1 to 4 mutations each)."""
    rng = random.Random(seed)
    base = seeds(port)
    corpus = [data for data, _ in base]
    yield from base
    for _ in range(max(0, count - len(base))):
        data = rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            data = _mutate(rng, data, corpus)
        yield data, "any"


@dataclass
class Outcome:
    data: bytes
    expect: str
    statuses: list[int]
    hung: bool

    @property
    def status(self) -> int | None:
        return self.statuses[0] if self.statuses else None

    @property
    def acceptable(self) -> bool:
        """Answered (or closed) in time, only with statuses the gateway may give, and a
        seed's known answer: valid ones served, denied ones 403, bad ones 4xx or closed."""
        if self.hung or not set(self.statuses) <= ALLOWED_STATUSES:
            return False
        first = self.status
        if self.expect == "ok":
            return first == 200
        if self.expect == "denied":
            return first == 403
        if self.expect == "bad":
            return first is None or (400 <= first < 500 and first != 403)
        return True


def send(port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send, half-close, read until the gateway closes: (reply, hung)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reply = b""
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            return reply, True
        except (ConnectionResetError, BrokenPipeError):
            pass
        return reply, False


def run_fuzz(port: int, inputs: Iterator[tuple[bytes, str]], *, seconds: float,
             workers: int, timeout: float = 8.0) -> list[Outcome]:
    """Send `inputs` from `workers` threads until they run out or `seconds` pass."""
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < end:
            with lock:
                item = next(inputs, None)
            if item is None:
                return
            data, expect = item
            reply, hung = send(port, data, timeout)
            statuses = [int(m.group(1)) for m in _STATUS.finditer(reply)
                        if m.start() == 0 or reply[m.start() - 2:m.start()] == b"\r\n"]
            with lock:
                outcomes.append(Outcome(data, expect, statuses, hung))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    return outcomes
