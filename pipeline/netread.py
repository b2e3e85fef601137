"""Network reads that always end: a floor on the transfer rate, an overall deadline, a cap on the bytes.

A socket timeout alone never ends a link that trickles (50 bytes/s resets a 60 s read timeout with
every packet), and a body read whole (`resp.content`) grows with whatever a server sends. Every
network read of the toolkit (downloads, shard streams, ranged sample reads, the shard cache) goes
through a `RateMeter` and reads its body in chunks of what has arrived (`read1`), at most the bytes
it expects. The meter counts only the time spent waiting in reads, so a consumer that pauses (a
training step between two samples of a shard stream) never makes a fast link look slow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

CHUNK = 1 << 20


@dataclass(frozen=True)
class NetLimits:
    """What every network read must achieve: `min_bytes_per_s` over each `window_s` of waiting, and
    all of it within `deadline_s` of waiting. A read that falls short ends with `ReadTooSlow`."""

    min_bytes_per_s: float = 16384.0
    window_s: float = 30.0
    deadline_s: float = 3600.0
    where: str = "sampler"  # the params section that sets them, named in the error

    def socket_timeout(self, timeout_s: float = 60.0) -> float:
        """A silent socket is the slowest link: it must end within one window too."""
        return min(timeout_s, self.window_s)


class ReadTooSlow(Exception):
    """A network read fell below its NetLimits; the message names the URL, the bytes and the time."""


class RateMeter:
    """Bytes and waiting time of one network read (across its reconnects); raises ReadTooSlow."""

    def __init__(self, url: str, limits: NetLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.limits, self.clock = url, limits, clock
        self.bytes = self.waited = 0.0
        self._mark_bytes = self._mark_waited = 0.0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time the block as waiting for the network; check the limits after it (even when it raised)."""
        start = self.clock()
        try:
            yield
        finally:
            self.waited += self.clock() - start
            self.check()

    def add(self, n: int) -> None:
        self.bytes += n

    def check(self) -> None:
        lim = self.limits
        if self.waited > lim.deadline_s:
            self._fail(f"past the {lim.deadline_s:g} s deadline ({lim.where}.deadline_s)")
        span = self.waited - self._mark_waited
        if span >= lim.window_s:
            rate = (self.bytes - self._mark_bytes) / span
            if rate < lim.min_bytes_per_s:
                self._fail(
                    f"{rate:.0f} B/s over the last {span:.0f} s, below the floor of "
                    f"{lim.min_bytes_per_s:g} B/s ({lim.where}.min_bytes_per_s)"
                )
            self._mark_bytes, self._mark_waited = self.bytes, self.waited

    def _fail(self, why: str) -> None:
        raise ReadTooSlow(f"{self.url}: {int(self.bytes)} bytes in {self.waited:.1f} s: {why}")


def read1(stream: IO[bytes] | Any, n: int, meter: RateMeter) -> bytes:
    """What has arrived of `stream`, at most `n` bytes (one socket read when the stream has `read1`)."""
    read = getattr(stream, "read1", stream.read)
    with meter.waiting():
        data: bytes = read(n)
        meter.add(len(data))
    return data


def iter_body(
    stream: IO[bytes] | Any, meter: RateMeter, limit: int | None, chunk: int = CHUNK
) -> Iterator[bytes]:
    """The body of `stream` in chunks, metered; stops after `limit` bytes (None: at the end)."""
    left = limit
    while left is None or left > 0:
        data = read1(stream, chunk if left is None else min(chunk, left), meter)
        if not data:
            return
        if left is not None:
            left -= len(data)
        yield data


def read_body(stream: IO[bytes] | Any, meter: RateMeter, limit: int, *, exact: bool) -> bytes:
    """At most `limit` bytes of `stream`. `exact`: the body is `limit` bytes and anything after it is
    left unread; else the body must end by `limit` (a longer one is a ValueError, never more memory)."""
    parts = list(iter_body(stream, meter, limit))
    data = b"".join(parts)
    if not exact and len(data) == limit and read1(stream, 1, meter):
        raise ValueError(f"{meter.url}: the body goes on beyond {limit} bytes")
    return data
