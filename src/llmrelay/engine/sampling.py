"""Per-request generation parameters for llama.cpp, and the sampler chain built from them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from llama_cpp import _internals as internals
from llama_cpp.llama_grammar import LlamaGrammar

_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED means "pick one at random"
_PENALTY_WINDOW = 64


@dataclass(slots=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1


def choice_seed(seed: int | None, index: int) -> int:
    """A uint32 seed for choice ``index``: fixed seeds stay reproducible, choices independent."""
    if seed is None:
        return random.getrandbits(32) % _RANDOM_SEED
    value = (seed + index) & 0xFFFFFFFF
    return value if value != _RANDOM_SEED else value - 1


def build_sampler(
    model: internals.LlamaModel, params: GenerationParams, seed: int
) -> internals.LlamaSampler:
    """The llama.cpp sampler chain; the order follows llama.cpp's own server."""
    sampler = internals.LlamaSampler()
    if params.logit_bias:
        # OpenAI documents -100 as a ban; llama.cpp adds the bias to the logit, so make it exact.
        bias = {t: (-math.inf if b <= -100 else b) for t, b in params.logit_bias.items()}
        sampler.add_logit_bias(model.n_vocab(), bias)
    if (
        params.repetition_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    ):
        sampler.add_penalties(
            n_vocab=model.n_vocab(),
            penalty_last_n=_PENALTY_WINDOW,
            penalty_repeat=params.repetition_penalty,
            penalty_freq=params.frequency_penalty,
            penalty_present=params.presence_penalty,
        )
    if params.grammar is not None:
        sampler.add_grammar(model, LlamaGrammar.from_string(params.grammar, verbose=False))
    if params.temperature <= 0.0:
        sampler.add_greedy()
        return sampler
    if params.top_k > 0:
        sampler.add_top_k(params.top_k)
    if params.top_p < 1.0:
        sampler.add_top_p(params.top_p, 1)
    if params.min_p > 0.0:
        sampler.add_min_p(params.min_p, 1)
    sampler.add_temp(params.temperature)
    sampler.add_dist(seed)
    return sampler
