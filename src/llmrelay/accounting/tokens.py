"""Token estimates for upstreams that report no usage (the row is then marked estimated).

tiktoken downloads its vocabularies at run time, which llmrelay must never do; the bundled
model's tokenizer (loaded vocabulary-only, a few MB) stands in for it.
"""

from __future__ import annotations

import threading
from typing import Any


class TokenEstimator:
    def __init__(self) -> None:
        self._vocab: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._vocab is None:
                from llama_cpp import Llama

                from llmrelay.engine.model_files import bundled_model_path

                self._vocab = Llama(str(bundled_model_path()), vocab_only=True, verbose=False)
        return self._vocab

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        return len(self._load().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
