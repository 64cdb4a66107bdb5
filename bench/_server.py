"""Start a real llmrelay server for a benchmark and stop it afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ADMIN_KEY = "sk-bench-0123456789abcdef0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    config: dict[str, Any],
    *,
    extra_env: dict[str, str] | None = None,
    pids: list[int] | None = None,
    wrapper: tuple[str, ...] = (),
    module: str = "llmrelay",
    patience: float = 120,
) -> Iterator[str]:
    """A llmrelay server on a free port; yields its URL (and appends its pid to ``pids``).

    ``wrapper`` goes before the command (a profiler), ``module`` is what ``python -m`` runs, and
    ``patience`` is how many seconds starting and stopping may take.
    """
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(json.dumps(config))
        env = {**os.environ, "LLMRELAY_ADMIN_KEY": ADMIN_KEY, **(extra_env or {})}
        process = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                "-m",
                module,
                "serve",
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--config",
                str(config_file),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        if pids is not None:
            pids.append(process.pid)
        try:
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("server did not become ready")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=max(20, patience))
