"""``separate_reasoning``: move ``<think>…</think>`` into reasoning deltas, or back inline.

Tags may be cut anywhere across chunks; only text that could be the start of a tag is held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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


async def separate(chunks: AsyncIterator[Chunk], n: int) -> AsyncIterator[Chunk]:
    """Inline ``<think>`` text becomes :class:`ReasoningDelta`."""
    splitters = [ThinkSplitter(i) for i in range(n)]
    async for chunk in chunks:
        if isinstance(chunk, TextDelta) and not splitters[chunk.index].passes_through(chunk.text):
            parts = splitters[chunk.index].feed(chunk.text)
            for part in parts:
                if isinstance(part, TextDelta) and len(parts) == 1:
                    part.logprobs = chunk.logprobs
                yield part
        elif isinstance(chunk, Finish):
            for part in splitters[chunk.index].flush():
                yield part
            yield chunk
        else:
            yield chunk


async def inline(chunks: AsyncIterator[Chunk], n: int) -> AsyncIterator[Chunk]:
    """:class:`ReasoningDelta` becomes ``<think>…</think>`` inside the content."""
    open_ = [False] * n
    async for chunk in chunks:
        if isinstance(chunk, ReasoningDelta):
            prefix = "" if open_[chunk.index] else OPEN
            open_[chunk.index] = True
            yield TextDelta(chunk.index, prefix + chunk.text)
            continue
        if isinstance(chunk, TextDelta | Finish) and open_[chunk.index]:
            open_[chunk.index] = False
            yield TextDelta(chunk.index, CLOSE + "\n")
        yield chunk
