"""The pure pieces on their own: stream transforms, parsers, settings."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmrelay import jsonio, reasoning
from llmrelay.dialects.openai_chat import parse_chat_request
from llmrelay.engine.ranges import integer_range
from llmrelay.engine.stops import find_stop, held_length
from llmrelay.engine.tools import ToolCallParser
from llmrelay.errors import InvalidJSON
from llmrelay.request import ImagePart, TextPart, VideoPart
from llmrelay.settings import load_settings
from llmrelay.stream import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta, collect


async def _chunks(parts: list[str]) -> AsyncIterator[Chunk]:
    for part in parts:
        yield TextDelta(0, part)
    yield Finish(0, "stop")


def _split_everywhere(text: str) -> list[list[str]]:
    """Every way to cut the text twice, and once into single characters."""
    cuts = [
        [text[:i], text[i:j], text[j:]]
        for i in range(len(text) + 1)
        for j in range(i, len(text) + 1)
    ]
    return [*cuts, list(text)]


@pytest.mark.parametrize("parts", _split_everywhere("<think>plan it</think>\nThe answer."))
def test_think_tags_split_across_any_chunk_boundary(parts: list[str]) -> None:
    result = asyncio.run(collect(reasoning.apply(reasoning.Separate(1), _chunks(parts)), 1))
    assert result.choices[0].reasoning == "plan it"
    assert result.choices[0].text == "The answer."


def test_reasoning_inline_when_not_separate() -> None:
    async def source() -> AsyncIterator[Chunk]:
        yield ReasoningDelta(0, "plan")
        yield TextDelta(0, "answer")
        yield Finish(0, "stop")

    result = asyncio.run(collect(reasoning.apply(reasoning.Inline(1), source()), 1))
    assert result.choices[0].text == "<think>plan</think>\nanswer"


def test_text_without_tags_passes_unchanged() -> None:
    result = asyncio.run(
        collect(reasoning.apply(reasoning.Separate(1), _chunks(["a < b", " and c"])), 1)
    )
    assert result.choices[0].text == "a < b and c" and result.choices[0].reasoning == ""


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 200])
def test_auto_tool_calls_parse_at_any_chunk_size(size: int) -> None:
    text = "Let me check. " + CALL
    parser = ToolCallParser(0, forced=False)
    out = [d for i in range(0, len(text), size) for d in parser.feed(text[i : i + size])]
    out += parser.finish()
    content = "".join(d.text for d in out if isinstance(d, TextDelta))
    calls = [d for d in out if isinstance(d, ToolCallDelta)]
    assert content == "Let me check. "
    assert calls[0].name == "get_weather" and calls[0].id
    assert json.loads("".join(c.arguments for c in calls)) == {"city": "Paris"}
    assert parser.calls == 1


def test_broken_tool_call_text_is_kept_as_content() -> None:
    parser = ToolCallParser(0, forced=False)
    text = "<tool_call>not json at all</tool_call> done"
    out = parser.feed(text) + parser.finish()
    assert "".join(d.text for d in out if isinstance(d, TextDelta)) == text
    assert parser.calls == 0


def test_forced_call_streams_arguments() -> None:
    parser = ToolCallParser(0, forced=True)
    text = '{"name": "f", "arguments": {"a": [1, 2, {"b": "}"}]}}'
    out = [d for ch in text for d in parser.feed(ch)] + parser.finish()
    calls = [d for d in out if isinstance(d, ToolCallDelta)]
    assert calls[0].name == "f"
    assert json.loads("".join(c.arguments for c in calls)) == {"a": [1, 2, {"b": "}"}]}
    assert len([c for c in calls if c.arguments]) > 5


def test_stop_matching() -> None:
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) == -1
    assert held_length("the end", ["ending"]) == 3
    assert held_length("abc", ["zz"]) == 0


def test_relaxed_json_and_messages() -> None:
    assert jsonio.parse_body(b'{"a": 1,}', relaxed=True) == {"a": 1}
    with pytest.raises(InvalidJSON, match="trailing comma at line 1 column 8"):
        jsonio.parse_body(b'{"a": 1,}')
    with pytest.raises(InvalidJSON, match="empty"):
        jsonio.parse_body(b"  ")


def test_dialect_shapes_normalise_to_one_request() -> None:
    body = {
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "one part object"}},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_image", "image_url": {"url": "https://x/a.png"}},
                    {"type": "image_url", "image_url": "https://x/b.png"},
                    {"type": "video_url", "video_url": {"url": "https://x/c.mp4"}},
                ],
            },
            {"role": "developer", "content": "be brief"},
            {"role": "function", "name": "f", "content": "42"},
        ],
        "tools": {"type": "function", "function": {"name": "f"}},
        "functions": [{"name": "g"}],
        "temperature": {},
        "web_search_options": {},
    }
    req = parse_chat_request(body, path_model=None, default_model="m")
    assert req.model == "m"
    assert req.messages[0].content == [TextPart("one part object")]
    assert [type(p) for p in req.messages[1].content] == [TextPart, ImagePart, ImagePart, VideoPart]
    assert req.messages[3].role == "tool" and req.messages[3].tool_call_id == "f"
    assert [t.name for t in req.tools] == ["f", "g"]
    assert req.sampling.temperature is None
    assert req.web_search


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 9000\nrelaxed_json: true\ndefault_model: from-file\n")
    monkeypatch.setenv("LLMRELAY_PORT", "9100")
    settings = load_settings(config, default_model="from-cli")
    assert settings.relaxed_json is True  # file
    assert settings.port == 9100  # env beats file
    assert settings.default_model == "from-cli"  # flags beat env


def _range_regex(low: int | None, high: int | None) -> re.Pattern[str]:
    # The GBNF subset integer_range emits reads as a regular expression once quotes go.
    return re.compile("^(?:" + integer_range(low, high).replace('"', "").replace(" ", "") + ")$")


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (0, 0),
        (5, 9),
        (0, 100),
        (7, 1234),
        (-15, 15),
        (-100, -7),
        (None, 3),
        (-3, None),
        (12, None),
        (None, None),
        (0, None),
        (None, -5),
        (99, 101),
        (1, 1_000_000),
    ],
)
def test_integer_range_matches_exactly_the_range(low: int | None, high: int | None) -> None:
    pattern = _range_regex(low, high)
    rng = random.Random(low or 0)
    samples = list(range(-1500, 1500)) + [rng.randint(-(10**9), 10**9) for _ in range(1500)]
    for n in samples:
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert bool(pattern.match(str(n))) == inside, (low, high, n)
    for bad in ("01", "-0", "00", "+1", "-01", "1.0"):
        assert not pattern.match(bad), (low, high, bad)


def test_integer_range_refuses_an_empty_range() -> None:
    with pytest.raises(ValueError, match="greater than maximum"):
        integer_range(5, 1)


def test_grammar_strings_exclude_raw_control_characters() -> None:
    """A raw newline inside a JSON string is invalid JSON: forced tool arguments and JSON
    output must not be able to contain one (llama-cpp-python's own rule allowed it)."""
    from llmrelay.engine.grammar import schema_grammar

    for schema in ({"type": "string"}, {"type": "object"}, {"type": "array"}):
        rules = dict(
            line.split(" ::= ", 1) for line in schema_grammar(schema, "x").splitlines() if line
        )
        assert rules["char"].startswith(r'[^"\\\x7F\x00-\x1F] | "\\" ')
