"""Turn generated text into streamed tool calls, as the text is produced."""

from __future__ import annotations

import re
import secrets

from llmrelay.engine.prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from llmrelay.stream import TextDelta, ToolCallDelta

_HEADER = re.compile(
    r'^\s*\{\s*"name"\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*', re.DOTALL
)
_TAIL = re.compile(r"\s*\}\s*$")
_HEADER_LIMIT = 256  # text that has not become a call header by then is not a call


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


class CallStreamer:
    """Parses ``{"name": "...", "arguments": {...}}`` incrementally into tool-call deltas."""

    def __init__(self, index: int, call_index: int) -> None:
        self.index = index
        self.call_index = call_index
        self.buffer = ""
        self.started = False
        self.failed = False
        self.emitted = False

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.buffer += text
        out: list[ToolCallDelta] = []
        if not self.started:
            match = _HEADER.match(self.buffer)
            if match is None:
                head = self.buffer.lstrip()
                if len(self.buffer) > _HEADER_LIMIT or (head and not head.startswith("{")):
                    self.failed = True
                return out
            self.started = True
            name = match.group("name").encode().decode("unicode_escape")
            out.append(ToolCallDelta(self.index, self.call_index, new_call_id(), name, ""))
            self.buffer = self.buffer[match.end() :]
        if self.started and not self.emitted:
            self.buffer = self.buffer.lstrip()
        tail = _TAIL.search(self.buffer)
        keep = len(self.buffer) - tail.start() if tail else 0
        ready, self.buffer = (
            self.buffer[: len(self.buffer) - keep],
            self.buffer[len(self.buffer) - keep :],
        )
        if ready:
            self.emitted = True
            out.append(ToolCallDelta(self.index, self.call_index, arguments=ready))
        return out


class ToolCallParser:
    """Splits one choice's text into content and tool calls.

    ``forced``: the whole output is one call (grammar-constrained). Otherwise calls are
    recognised between ``<tool_call>`` tags and all other text stays content.
    """

    def __init__(self, index: int, *, forced: bool) -> None:
        self.index = index
        self.forced = forced
        self.calls = 0
        self.pending = ""
        self.call: CallStreamer | None = CallStreamer(index, 0) if forced else None
        self.raw_call = ""

    def feed(self, text: str) -> list[TextDelta | ToolCallDelta]:
        if self.forced:
            assert self.call is not None
            deltas: list[TextDelta | ToolCallDelta] = list(self.call.feed(text))
            return deltas
        self.pending += text
        out: list[TextDelta | ToolCallDelta] = []
        while self.pending:
            if self.call is None:
                start = self.pending.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = _partial_suffix(self.pending, TOOL_CALL_OPEN)
                    emit = self.pending[: len(self.pending) - keep]
                    if emit:
                        out.append(TextDelta(self.index, emit))
                    self.pending = self.pending[len(self.pending) - keep :]
                    return out
                if start:
                    out.append(TextDelta(self.index, self.pending[:start]))
                self.pending = self.pending[start + len(TOOL_CALL_OPEN) :]
                self.call = CallStreamer(self.index, self.calls)
                self.raw_call = ""
            end = self.pending.find(TOOL_CALL_CLOSE)
            keep = 0 if end >= 0 else _partial_suffix(self.pending, TOOL_CALL_CLOSE)
            body_end = end if end >= 0 else len(self.pending) - keep
            body = self.pending[:body_end]
            self.raw_call += body
            out.extend(self._feed_call(body))
            if end < 0:
                self.pending = self.pending[body_end:]
                return out
            self.pending = self.pending[end + len(TOOL_CALL_CLOSE) :]
            out.extend(self._close_call(closed=True))
        return out

    def _feed_call(self, body: str) -> list[TextDelta | ToolCallDelta]:
        assert self.call is not None
        if self.call.failed:
            return []
        return list(self.call.feed(body))

    def _close_call(self, *, closed: bool) -> list[TextDelta | ToolCallDelta]:
        call, self.call = self.call, None
        if call is None:
            return []
        if call.started:
            self.calls += 1
            return []
        # Not a call after all: give the text back as content.
        text = TOOL_CALL_OPEN + self.raw_call + (TOOL_CALL_CLOSE if closed else "")
        return [TextDelta(self.index, text)]

    def finish(self) -> list[TextDelta | ToolCallDelta]:
        if self.forced:
            if self.call is not None and self.call.started:
                self.calls = 1
            return []
        out: list[TextDelta | ToolCallDelta] = []
        if self.call is not None:
            out.extend(self._close_call(closed=False))
        if self.pending:
            out.append(TextDelta(self.index, self.pending))
            self.pending = ""
        return out


def _partial_suffix(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
