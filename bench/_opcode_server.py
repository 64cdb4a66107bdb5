"""``llmrelay`` for :mod:`bench.opcodes`: the same server, counting the bytecode instructions
its main thread (the event loop) executes, per function.

Counting starts on SIGUSR1; on SIGUSR2 the counts are written as JSON to the file named by
``LLMRELAY_OPCODES_OUT`` (``{"opcodes": {function: n}, "calls": {function: n}}``, functions
named ``path:name``) and the process exits at once. Tracing makes the server some twenty times
slower, so its periodic work is spread as for :mod:`bench.instructions`.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from types import FrameType
from typing import Any

from bench._instrumented_server import spread_periodic_work
from llmrelay.cli import main

opcodes: collections.Counter[str] = collections.Counter()
calls: collections.Counter[str] = collections.Counter()
_names: dict[Any, str] = {}


def _name(frame: FrameType) -> str:
    code = frame.f_code
    found = _names.get(code)
    if found is None:
        path = code.co_filename.rsplit("site-packages/", 1)[-1].rsplit("src/", 1)[-1]
        found = _names[code] = f"{path}:{code.co_name}"
    return found


def _trace(frame: FrameType, event: str, arg: Any) -> Any:
    name = _name(frame)
    calls[name] += 1
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            opcodes[name] += 1
        return local

    return local


def _start(*_: object) -> None:
    sys.settrace(_trace)


def _dump(*_: object) -> None:
    sys.settrace(None)
    path = os.environ["LLMRELAY_OPCODES_OUT"]
    with open(path + ".part", "w") as out:
        json.dump({"opcodes": opcodes, "calls": calls}, out)
    os.replace(path + ".part", path)  # whole when it appears
    os._exit(0)


if __name__ == "__main__":
    spread_periodic_work()
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
    raise SystemExit(main())
