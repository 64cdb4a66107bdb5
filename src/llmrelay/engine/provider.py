"""Local GGUF models behind the provider interface."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmrelay.dialects.fields import invalid_value
from llmrelay.engine.grammar import check_grammar, forced_tools, request_grammar
from llmrelay.engine.model_files import resolve_model_path
from llmrelay.engine.pool import EnginePool
from llmrelay.engine.prompt import ChatTemplate
from llmrelay.engine.runner import ModelInstance
from llmrelay.engine.sampling import GenerationParams
from llmrelay.engine.tools import ToolCallParser
from llmrelay.errors import ContextLengthExceeded, InvalidRequest
from llmrelay.providers.base import Capabilities, ModelInfo
from llmrelay.request import ChatRequest
from llmrelay.settings import LocalModelConfig
from llmrelay.stream import Chunk, Finish, TextDelta

_JSON_HINT = "Answer with a single JSON value only."


@dataclass(slots=True)
class _Local:
    config: LocalModelConfig
    pool: EnginePool
    template: ChatTemplate | None = None
    add_bos: bool = False
    bos_text: str = ""


class LocalProvider:
    """Every configured local model; each has its own pool of llama.cpp instances."""

    def __init__(self, configs: list[LocalModelConfig]) -> None:
        self._models: dict[str, _Local] = {}
        self._infos: list[ModelInfo] = []
        self._created = int(time.time())
        for config in configs:
            pool = EnginePool(
                resolve_model_path(config.path),
                n_ctx=config.n_ctx,
                n_threads=config.n_threads or max(1, os.cpu_count() or 1),
                instances=config.instances,
                max_queue=config.max_queue,
            )
            self._models[config.name] = _Local(config, pool)
            caps = Capabilities(context_length=config.n_ctx, reasoning=config.reasoning)
            self._infos.append(
                ModelInfo(
                    id=config.name,
                    owned_by="llmrelay",
                    capabilities=caps,
                    created=self._created,
                    description=config.description,
                    separate_reasoning=config.separate_reasoning,
                )
            )

    def models(self) -> list[ModelInfo]:
        return list(self._infos)

    async def start(self) -> None:
        for local in self._models.values():
            await asyncio.to_thread(local.pool.load)
            model = local.pool.tokenizer.model
            meta = model.metadata()
            bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
            eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
            source = local.config.chat_template or meta.get("tokenizer.chat_template")
            local.template = ChatTemplate(source, bos=bos, eos=eos)
            local.add_bos = bool(model.add_bos_token())
            local.bos_text = bos

    async def close(self) -> None:
        for local in self._models.values():
            await asyncio.to_thread(local.pool.close)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {"busy": local.pool.busy, "tokens_generated": local.pool.tokens_generated}
            for name, local in self._models.items()
        }

    def _prompt(self, local: _Local, request: ChatRequest) -> str:
        if request.raw_prompt is not None:
            return request.raw_prompt
        assert local.template is not None
        hint = None
        if request.response_format.type != "text" and not forced_tools(request):
            hint = _JSON_HINT
            schema = request.response_format.schema
            if schema is not None:
                hint += f" It must match this JSON Schema:\n{json.dumps(schema)}"
        return local.template.render(request, instructions=hint)

    def _params(
        self, local: _Local, request: ChatRequest, prompt_len: int, grammar: str | None
    ) -> GenerationParams:
        cfg = local.config
        room = cfg.n_ctx - prompt_len
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {cfg.n_ctx} tokens, but the messages "
                f"take {prompt_len} tokens. Shorten the messages.",
                param="messages",
            )
        wanted = request.max_tokens or min(cfg.default_max_tokens or room, room)
        if wanted > room and not request.truncate_on_overflow:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {cfg.n_ctx} tokens. You requested "
                f"{prompt_len + wanted} tokens ({prompt_len} in the messages, {wanted} in the "
                "completion). Reduce the length of the messages or max_tokens, or send "
                "context_length_exceeded_behavior 'truncate'.",
                param="max_tokens",
            )
        s, d = request.sampling, cfg.defaults
        return GenerationParams(
            max_tokens=min(wanted, room),
            temperature=d.temperature if s.temperature is None else s.temperature,
            top_p=d.top_p if s.top_p is None else s.top_p,
            top_k=d.top_k if s.top_k is None else s.top_k,
            min_p=d.min_p if s.min_p is None else s.min_p,
            frequency_penalty=s.frequency_penalty or 0.0,
            presence_penalty=s.presence_penalty or 0.0,
            repetition_penalty=s.repetition_penalty or 1.0,
            logit_bias=s.logit_bias,
            seed=s.seed,
            stop=s.stop,
            grammar=grammar,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
            n=request.n,
        )

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[Chunk]:
        local = self._models[model.id]
        instance = local.pool.tokenizer
        prompt = self._prompt(local, request)
        add_bos = local.add_bos and not (local.bos_text and prompt.startswith(local.bos_text))
        tokens = await asyncio.to_thread(instance.tokenize, prompt, add_bos=add_bos)
        if not tokens:
            tokens = _start_tokens(instance)
        _check_logit_bias(request, instance.n_vocab)
        grammar = request_grammar(request)
        if grammar is not None:
            check_grammar(instance.model.vocab, grammar, "response_format")
        params = self._params(local, request, len(tokens), grammar)
        forced = forced_tools(request) is not None
        parse_calls = forced or (bool(request.tools) and request.tool_choice.mode == "auto")
        parsers = [ToolCallParser(i, forced=forced) for i in range(request.n)]
        async for chunk in local.pool.generate(tokens, params):
            if not parse_calls:
                yield chunk
            elif isinstance(chunk, TextDelta):
                outs = parsers[chunk.index].feed(chunk.text)
                only = outs[0] if len(outs) == 1 else None
                if isinstance(only, TextDelta) and only.text == chunk.text:
                    only.logprobs = chunk.logprobs  # passed through whole: tokens still align
                for out in outs:
                    yield out
            elif isinstance(chunk, Finish):
                parser = parsers[chunk.index]
                for out in parser.finish():
                    yield out
                reason = chunk.reason
                if parser.calls and reason == "stop":
                    reason = "tool_calls"
                yield Finish(chunk.index, reason)
            else:
                yield chunk


def _start_tokens(instance: ModelInstance) -> list[int]:
    """An empty prompt starts from the BOS token, as llama.cpp's server does."""
    bos = instance.model.token_bos()
    if bos < 0:
        raise InvalidRequest("The prompt is empty.", param="prompt", code="invalid_value")
    return [bos]


def _check_logit_bias(request: ChatRequest, n_vocab: int) -> None:
    for token_id in request.sampling.logit_bias:
        if token_id >= n_vocab:
            raise invalid_value(
                f"logit_bias.{token_id}",
                f"token id {token_id} is outside this model's vocabulary (0-{n_vocab - 1}).",
            )
