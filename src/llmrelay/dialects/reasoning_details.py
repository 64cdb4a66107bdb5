"""``reasoning_details`` on input assistant messages: OpenRouter's signed reasoning blocks.

``reasoning.text`` (text and signature) and ``reasoning.encrypted`` (data) entries are kept for
the provider that signed them; other kinds (``reasoning.summary``…) carry nothing to replay.
Clients that joined a stream's delta lists send one block in pieces with the same ``index``:
those are put back together.
"""

from __future__ import annotations

from llmrelay.dialects.fields import Fields, join
from llmrelay.stream import ReasoningDetail

TEXT, ENCRYPTED = "reasoning.text", "reasoning.encrypted"


def parse_reasoning_details(f: Fields) -> list[ReasoningDetail]:
    details: list[ReasoningDetail] = []
    for i, raw in enumerate(f.array("reasoning_details") or []):
        detail = _detail(Fields(raw, join(f.param("reasoning_details"), i)), i)
        if detail is not None:
            _add(details, detail)
    return details


def _detail(f: Fields, position: int) -> ReasoningDetail | None:
    kind = f.string("type", required=True)
    block = f.integer("index", ge=0)
    fmt = f.string("format") or ""
    if kind == TEXT:
        return ReasoningDetail(
            position if block is None else block,
            fmt,
            text=f.string("text") or "",
            signature=f.string("signature"),
        )
    if kind == ENCRYPTED:
        data = f.string("data", required=True)
        return ReasoningDetail(position if block is None else block, fmt, data=data)
    return None


def _add(details: list[ReasoningDetail], detail: ReasoningDetail) -> None:
    last = details[-1] if details else None
    if (
        last is None
        or last.block != detail.block
        or (last.data is None) != (detail.data is None)
        or last.data is not None
    ):
        details.append(detail)
        return
    last.text += detail.text  # a streamed piece of the same block
    last.signature = detail.signature or last.signature
    last.format = last.format or detail.format
