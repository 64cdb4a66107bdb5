"""One real llmrelay server per test session, on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.schemas import check_chunk, check_completion

MODEL = "smollm2-135m-instruct"
TEST_N_CTX = 2048
SECOND_MODEL = "second-gguf"  # the same file configured again, as any further GGUF would be
# A template that, like Qwen3's and gpt-oss's, reads enable_thinking and reasoning_effort.
SECOND_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if loop.first and enable_thinking is false %} /no_think{% endif %}"
    "{% if loop.first and reasoning_effort %} Reasoning effort: {{ reasoning_effort }}.{% endif %}"
    "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "llmrelay",
                *args,
                "--data-dir",
                str(self.data_dir),
                "--config",
                str(self.data_dir.parent / "config.yaml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            input=input,
        )

    def create_key(self, name: str, *extra: str) -> str:
        result = self.cli("keys", "create", "--name", name, *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]


def start_server(tmp: Path, *, extra_config: dict[str, Any] | None = None) -> Server:
    port = free_port()
    from llmrelay.engine.model_files import bundled_model_path

    second = {
        "name": SECOND_MODEL,
        "path": str(bundled_model_path()),
        "n_ctx": 512,
        "n_threads": 1,
        "aliases": ["gpt-4o-mini"],
        "default_max_tokens": 8,
        "reasoning": True,
        "chat_template": SECOND_TEMPLATE,
    }
    config = {
        "local_models": [{"n_ctx": TEST_N_CTX, "n_threads": 2}, second],
        **(extra_config or {}),
    }
    config_file = tmp / "config.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmrelay",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "data"),
            "--config",
            str(config_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    admin_key = ""
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("server exited during start-up:\n" + "".join(output))
        output.append(line)
        if line.startswith("sk-"):
            admin_key = line.strip()
        if "Application startup complete" in line:
            break
    else:
        process.kill()
        raise RuntimeError("server did not start in time:\n" + "".join(output))
    # Keep draining output so the server never blocks on a full pipe.
    threading.Thread(
        target=lambda: [output.append(x) for x in process.stdout],  # type: ignore[union-attr]
        daemon=True,
    ).start()
    return Server(f"http://127.0.0.1:{port}", admin_key, tmp / "data", process, output)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)


def admin_client(server: Server, timeout: float = 120) -> httpx.Client:
    """An httpx client for ``server`` that sends its admin key."""
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with admin_client(server) as c:
        yield c


def ok(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion that must succeed, checked against OpenAI's schema."""
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    check_completion(response.json())
    return response.json()


def stream_events(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed chat completion that must succeed."""
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse and validate every event of an SSE body; the last must be [DONE]."""
    events: list[dict[str, Any]] = []
    done = False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        assert not done, "event after [DONE]"
        if data == "[DONE]":
            done = True
            continue
        payload = json.loads(data)
        if "error" not in payload:
            check_chunk(payload)
        events.append(payload)
    assert done or (events and "error" in events[-1]), "stream did not end with [DONE]"
    return events


def chat(messages: str | list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {"model": MODEL, "messages": messages, **params}
