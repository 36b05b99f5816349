"""The newest-frame-wins slot of one video stream connection (no HTTP here; service/api/stream.py uses it).

A connection has at most one frame in the server's pipeline and one waiting. A frame that arrives while
another is waiting replaces it; the replaced frame's number is reported, with the next answer, as
dropped. So a slow network or a busy server never builds a backlog: the answer a client gets is always
of the newest frame that was waiting when the server got to it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    index: int  # the client's frame number, counting every binary message from 0
    data: bytes
    received: float  # time.perf_counter() at arrival


class NewestFrame:
    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._dropped: list[int] = []
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, frame: Frame) -> Frame | None:
        """Let `frame` wait for the server; returns the frame it replaced (now dropped), if any."""
        replaced = self._frame
        if replaced is not None:
            self._dropped.append(replaced.index)
        self._frame = frame
        self._ready.set()
        return replaced

    def close(self) -> None:
        """No more frames: `take` returns None from now on (a waiting frame has no one to answer)."""
        self._closed = True
        self._ready.set()

    async def take(self) -> tuple[Frame, list[int]] | None:
        """The waiting frame (waiting for one if none is) and the frames dropped since the last take."""
        while True:
            if self._closed:
                return None
            if self._frame is not None:
                frame, dropped = self._frame, self._dropped
                self._frame, self._dropped = None, []
                self._ready.clear()
                return frame, dropped
            self._ready.clear()
            await self._ready.wait()
