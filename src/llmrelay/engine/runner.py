"""One llama.cpp model instance and its token loop, run on a worker thread.

The loop drives llama.cpp's context, batch and sampler chain directly rather than
``Llama.generate``: that keeps logprobs possible without ``logits_all`` (an n_ctx x vocab
array), lets a job be cancelled between any two tokens, and reuses the KV cache of the
longest common prompt prefix across requests.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp import _logger as llama_logger

from llmrelay.engine.sampling import GenerationParams, build_sampler, choice_seed
from llmrelay.engine.stops import find_stop, held_length
from llmrelay.stream import Chunk, Finish, FinishReason, TextDelta, TokenLogprob, TopLogprob, Usage

Emit = Callable[[Chunk | BaseException | None], None]


@dataclass(slots=True)
class Job:
    prompt_tokens: list[int]
    params: GenerationParams
    emit: Emit
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Pending:
    text: str
    logprob: TokenLogprob | None


class ModelInstance:
    """A loaded model with one context. Not thread-safe: one job at a time."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_batch: int = 512) -> None:
        llama_logger.set_verbose(False)  # llama.cpp logs every graph build to stderr otherwise
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        # llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on this machine
        # class with small models; extra buffer types are what route weights to them.
        model_params.use_extra_bufts = False
        self.model = internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = n_threads
        ctx_params.n_threads_batch = n_threads
        ctx_params.no_perf = True
        self.ctx = internals.LlamaContext(model=self.model, params=ctx_params, verbose=False)
        self.n_ctx = self.ctx.n_ctx()
        self.n_batch = n_batch
        self.n_vocab = self.model.n_vocab()
        self.batch = internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.cached: list[int] = []  # the tokens whose keys and values are in the KV cache
        self._pieces: dict[int, bytes] = {}
        self.tokens_generated = 0  # over the instance's life; lets tests see a job stop

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def piece(self, token: int) -> bytes:
        """The bytes of one token (which may be part of a UTF-8 character)."""
        cached = self._pieces.get(token)
        if cached is None:
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, size, 0, False)
                if n >= 0:
                    break
                size = -n
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.model.vocab, token))

    # -- evaluation -----------------------------------------------------------------------
    def _decode(self, tokens: list[int]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            self.batch.set_batch(part, n_past=len(self.cached), logits_all=False)
            self.ctx.decode(self.batch)
            self.cached.extend(part)

    def _load_prompt(self, tokens: list[int]) -> None:
        """Make the KV cache hold ``tokens`` with the logits of the last one ready."""
        if not tokens:
            raise ValueError("cannot generate from an empty prompt")  # llama.cpp would abort
        common = 0
        for a, b in zip(self.cached, tokens, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # always re-decode one token for fresh logits
        self.ctx.kv_cache_seq_rm(-1, common, -1)
        del self.cached[common:]
        self._decode(tokens[common:])

    def _logprob(self, token: int, text: str, raw: bytes, top: int) -> TokenLogprob:
        logits = np.ctypeslib.as_array(self.ctx.get_logits_ith(-1), shape=(self.n_vocab,))
        peak = float(logits.max())
        lse = peak + float(np.log(np.exp(logits - peak).sum()))
        entry = TokenLogprob(text, min(0.0, float(logits[token]) - lse), list(raw))
        if top:
            best = np.argpartition(-logits, top)[:top]
            for t in best[np.argsort(-logits[best])]:
                tb = self.piece(int(t))
                entry.top_logprobs.append(
                    TopLogprob(
                        tb.decode("utf-8", "replace"),
                        min(0.0, float(logits[t]) - lse),
                        list(tb),
                    )
                )
        return entry

    # -- the job --------------------------------------------------------------------------
    def run(self, job: Job) -> None:
        params = job.params
        self._load_prompt(job.prompt_tokens)
        completion_tokens = 0
        for index in range(params.n):
            if index:
                self._load_prompt(job.prompt_tokens)
            generated, reason = self._generate_choice(job, index)
            completion_tokens += generated
            if reason is None:
                return  # cancelled
            job.emit(Finish(index, reason))
        job.emit(Usage(len(job.prompt_tokens), completion_tokens))

    def _generate_choice(self, job: Job, index: int) -> tuple[int, FinishReason | None]:
        params = job.params
        sampler = build_sampler(self.model, params, choice_seed(params.seed, index))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending: list[_Pending] = []
        pending_text = ""
        generated = 0
        try:
            while True:
                if job.cancelled.is_set():
                    return generated, None
                if generated >= params.max_tokens or len(self.cached) >= self.n_ctx:
                    self._release(job, index, pending, len(pending_text))
                    return generated, "length"
                token = sampler.sample(self.ctx, -1)
                if self.is_end(token):
                    pending.append(_Pending(decoder.decode(b"", final=True), None))
                    self._release(job, index, pending, None)
                    return generated, "stop"
                generated += 1
                self.tokens_generated += 1
                raw = self.piece(token)
                text = decoder.decode(raw)
                logprob = (
                    self._logprob(token, text, raw, params.top_logprobs)
                    if params.logprobs
                    else None
                )
                pending.append(_Pending(text, logprob))
                pending_text += text
                cut = find_stop(pending_text, params.stop)
                if cut >= 0:
                    self._release(job, index, pending, cut, stop_cut=True)
                    return generated, "stop"
                safe = len(pending_text) - held_length(pending_text, params.stop)
                pending_text = pending_text[self._release(job, index, pending, safe) :]
                if generated < params.max_tokens:
                    self._decode([token])
        finally:
            sampler.close()

    @staticmethod
    def _release(
        job: Job, index: int, pending: list[_Pending], limit: int | None, *, stop_cut: bool = False
    ) -> int:
        """Emit whole pending tokens within the first ``limit`` characters (all if None);
        a token cut by a stop sequence is emitted up to the cut. Returns characters emitted."""
        text_parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        used = 0
        while pending:
            item = pending[0]
            end = used + len(item.text)
            if limit is not None and end > limit:
                break
            text_parts.append(item.text)
            if item.logprob is not None:
                logprobs.append(item.logprob)
            used = end
            pending.pop(0)
        if stop_cut and pending and limit is not None and used < limit:
            # A stop sequence may begin inside a token: keep the text before it.
            item = pending.pop(0)
            part = item.text[: limit - used]
            text_parts.append(part)
            if item.logprob is not None:
                item.logprob.token = part
                item.logprob.bytes = list(part.encode("utf-8"))
                logprobs.append(item.logprob)
            used = limit
        if text_parts or logprobs:
            job.emit(
                TextDelta(index, "".join(text_parts), logprobs if job.params.logprobs else None)
            )
        return used

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()
