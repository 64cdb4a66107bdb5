"""``separate_reasoning``: move ``<think>…</think>`` into reasoning deltas, or back inline.

Tags may be cut anywhere across chunks; only text that could be the start of a tag is held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from llmrelay.stream import Chunk, Finish, ReasoningDelta, TextDelta

OPEN, CLOSE = "<think>", "</think>"


def _partial(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkSplitter:
    def __init__(self, index: int) -> None:
        self.index = index
        self.inside = False
        self.buffer = ""
        self.after_close = False  # newlines right after </think> belong to neither part

    def passes_through(self, text: str) -> bool:
        """Whether ``text`` can skip the splitter (the common case: no tag anywhere near)."""
        return OPEN[0] not in text and not (self.buffer or self.inside or self.after_close)

    def feed(self, text: str) -> list[TextDelta | ReasoningDelta]:
        self.buffer += text
        out: list[TextDelta | ReasoningDelta] = []
        while True:
            if self.after_close:
                self.buffer = self.buffer.lstrip("\n")
                self.after_close = not self.buffer
            tag = CLOSE if self.inside else OPEN
            at = self.buffer.find(tag)
            if at < 0:
                keep = _partial(self.buffer, tag)
                self._emit(out, self.buffer[: len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return out
            self._emit(out, self.buffer[:at])
            self.buffer = self.buffer[at + len(tag) :]
            self.inside = not self.inside
            self.after_close = not self.inside

    def _emit(self, out: list[TextDelta | ReasoningDelta], text: str) -> None:
        if not text:
            return
        if self.inside:
            out.append(ReasoningDelta(self.index, text))
        else:
            out.append(TextDelta(self.index, text))

    def flush(self) -> list[TextDelta | ReasoningDelta]:
        out: list[TextDelta | ReasoningDelta] = []
        self._emit(out, self.buffer)
        self.buffer = ""
        return out


class Transform(Protocol):
    """Rewrites one chunk into zero or more; applied inline, without a generator per layer."""

    def __call__(self, chunk: Chunk) -> Iterable[Chunk]: ...


class Separate:
    """Inline ``<think>`` text becomes :class:`ReasoningDelta`."""

    def __init__(self, n: int) -> None:
        self.splitters = [ThinkSplitter(i) for i in range(n)]

    def __call__(self, chunk: Chunk) -> Iterable[Chunk]:
        if isinstance(chunk, TextDelta):
            splitter = self.splitters[chunk.index]
            if splitter.passes_through(chunk.text):
                return (chunk,)
            parts = splitter.feed(chunk.text)
            if len(parts) == 1 and isinstance(parts[0], TextDelta):
                parts[0].logprobs = chunk.logprobs
            return parts
        if isinstance(chunk, Finish):
            return [*self.splitters[chunk.index].flush(), chunk]
        return (chunk,)


class Inline:
    """:class:`ReasoningDelta` becomes ``<think>…</think>`` inside the content."""

    def __init__(self, n: int) -> None:
        self.open = [False] * n

    def __call__(self, chunk: Chunk) -> Iterable[Chunk]:
        if isinstance(chunk, ReasoningDelta):
            if not chunk.text:  # a signature or encrypted block: nothing to show inline
                return ()
            prefix = "" if self.open[chunk.index] else OPEN
            self.open[chunk.index] = True
            return (TextDelta(chunk.index, prefix + chunk.text),)
        if isinstance(chunk, TextDelta | Finish) and self.open[chunk.index]:
            self.open[chunk.index] = False
            return (TextDelta(chunk.index, CLOSE + "\n"), chunk)
        return (chunk,)


async def apply(transform: Transform, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """A chunk stream with ``transform`` applied (for callers that want an iterator)."""
    async for chunk in chunks:
        for out in transform(chunk):
            yield out
