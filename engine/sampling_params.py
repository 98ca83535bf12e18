"""SamplingParams: how one request picks tokens and when it stops; validated at construction."""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
from dataclasses import dataclass, field

from engine.checks import check
from engine.prompt_truncation import check_truncate_prompt_tokens
from engine.structured_outputs import StructuredOutputsParams

logger = logging.getLogger(__name__)
MIN_TEMPERATURE = 1e-2     # vLLM's _MAX_TEMP: a temperature in (0, this) is raised to this


class RequestOutputKind(enum.Enum):
    """vLLM's: what each RequestOutput of a request carries.

    CUMULATIVE: every output holds the sequences' whole text, token_ids and logprobs so far. DELTA: each
    output's CompletionOutput.text, token_ids and logprobs hold only what was added since the request's
    previous output (its prompt logprobs come with the first output only). FINAL_ONLY: one output, once the
    request finished, with the whole fields (`LLM.generate`, the server's non-streaming requests)."""

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling and stopping settings (the names and defaults vLLM users know).

    temperature 0 means greedy (then n must be 1), one in (0, 0.01) is raised to 0.01 with a warning (vLLM's rules);
    top_k 0 or -1 means no top-k; top_p 1 and min_p 0 disable those; seed -1 is no seed. `stop` strings are matched
    on the decoded text and are not returned (unless include_stop_str_in_output); `logprobs` asks for that many top
    alternatives per sampled token; `prompt_logprobs` for each prompt token's logprob given the tokens before it,
    with that many top alternatives (vLLM's; RequestOutput.prompt_logprobs); -1 for either: the whole vocabulary.
    `allowed_token_ids`: only these tokens may be sampled (the others' logits -inf before sampling; logprobs stay
    the model's raw ones, as vLLM's; ids checked against the vocabulary at LLMEngine.add_request).
    `truncate_prompt_tokens`: keep only the prompt's last k tokens (-1: the last max_model_len), applied at
    LLMEngine.add_request. `bad_words`: words never to generate (vLLM's: the last token of a word is banned while
    the output ends with its other tokens; engine/bad_words.py). `structured_outputs`: vLLM's
    StructuredOutputsParams (or its dict); only `choice` is supported (the answer is one of those strings;
    engine/structured_outputs.py). `output_kind`: what each of the request's outputs carries
    (RequestOutputKind: cumulative fields, the step's deltas, or one final output).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = None
    bad_words: list[str] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    # a seed, logprobs, min_tokens, logit_bias, allowed_token_ids, bad_words or structured_outputs: the
    # sampling metadata needs Python for this request's row (set at construction)
    uses_rare_features: bool = field(init=False, compare=False, repr=False, default=False)
    # penalties, bad words and structured outputs read every token generated so far, so they cannot run a
    # step ahead (set at construction; the engine reads it for every running request each step)
    uses_output_history: bool = field(init=False, compare=False, repr=False, default=False)

    def __post_init__(self) -> None:
        for name in ("stop", "bad_words"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, [getattr(self, name)])
        check(self.n >= 1, "n", self.n, "must be at least 1")
        check(math.isfinite(self.temperature) and 0 <= self.temperature <= 2, "temperature", self.temperature,
              "must be in [0, 2]")
        if 0 < self.temperature < MIN_TEMPERATURE:     # vLLM's: lower ones overflow the softmax
            logger.warning("temperature %s is less than %s, which may cause numerical errors nan or inf in "
                           "tensors. We have maxed it out to %s.", self.temperature, MIN_TEMPERATURE,
                           MIN_TEMPERATURE)
            object.__setattr__(self, "temperature", MIN_TEMPERATURE)
        if self.seed == -1:                             # vLLM's: -1 is no seed
            object.__setattr__(self, "seed", None)
        check(self.temperature > 0 or self.n == 1, "n", self.n, "must be 1 when using greedy sampling")
        check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        check(self.top_k == -1 or self.top_k >= 0, "top_k", self.top_k,
              "must be -1, 0 (disabled) or a positive integer")
        check(0 <= self.min_p <= 1, "min_p", self.min_p, "must be in [0, 1]")
        check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens, "must be at least 1")
        check(self.min_tokens >= 0, "min_tokens", self.min_tokens, "must be >= 0")
        if self.max_tokens is not None:
            check(self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
                   f"must be <= max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):     # -1: the whole vocabulary (vLLM's)
            value = getattr(self, name)
            check(value is None or value >= -1, name, value, "must be non-negative or -1")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty, "must be in [-2, 2]")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty, "must be in [-2, 2]")
        check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
              self.repetition_penalty, "must be a finite number greater than zero")
        if self.logit_bias:
            object.__setattr__(self, "logit_bias", _int_keys(self.logit_bias))
        if self.allowed_token_ids is not None:
            check(len(self.allowed_token_ids) > 0, "allowed_token_ids", self.allowed_token_ids,
                  "must not be empty")
            ids_ok = all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.allowed_token_ids)
            check(ids_ok, "allowed_token_ids", self.allowed_token_ids, "must be token ids (integers >= 0)")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if isinstance(self.structured_outputs, dict):
            object.__setattr__(self, "structured_outputs", StructuredOutputsParams.from_dict(self.structured_outputs))
        if self.structured_outputs is not None:
            check(isinstance(self.structured_outputs, StructuredOutputsParams), "structured_outputs",
                  self.structured_outputs, "must be a StructuredOutputsParams (or its dict)")
        object.__setattr__(self, "uses_rare_features", (
            self.seed is not None or self.logprobs is not None or self.min_tokens > 0 or bool(self.logit_bias)
            or self.allowed_token_ids is not None or bool(self.bad_words) or self.structured_outputs is not None))
        object.__setattr__(self, "uses_output_history", (
            self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
            or bool(self.bad_words) or self.structured_outputs is not None))
        if self.stop is not None:
            check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "must be non-empty strings")
        if self.bad_words is not None:
            words_ok = isinstance(self.bad_words, (list, tuple)) and all(isinstance(w, str) and w.strip()
                                                                         for w in self.bad_words)
            check(words_ok, "bad_words", self.bad_words, "must be strings with a character other than whitespace")
        check(isinstance(self.output_kind, RequestOutputKind), "output_kind", self.output_kind,
              "must be a RequestOutputKind (CUMULATIVE, DELTA or FINAL_ONLY)")

    def with_vocab_logprobs(self, vocab_size: int) -> SamplingParams:
        """These params with logprobs / prompt_logprobs -1 (vLLM's: the whole vocabulary) as vocab_size."""
        changes = {name: vocab_size for name in ("logprobs", "prompt_logprobs") if getattr(self, name) == -1}
        return dataclasses.replace(self, **changes) if changes else self

    def check_max_logprobs(self, max_logprobs: int) -> None:
        """vLLM's ValueErrors (its messages) when logprobs or prompt_logprobs ask for more than
        `max_logprobs` (EngineConfig.max_logprobs; -1: no cap)."""
        for kind, value in (("sample", self.logprobs), ("prompt", self.prompt_logprobs)):
            message = over_max_logprobs(kind, value, max_logprobs)
            if message is not None:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def all_stop_token_ids(self) -> frozenset[int]:
        return frozenset(self.stop_token_ids or ())


def over_max_logprobs(kind: str, value: int | None, max_logprobs: int) -> str | None:
    """vLLM's message where `value` ("sample" or "prompt" logprobs) asks for more than `max_logprobs`
    (-1: no cap); None where it does not."""
    if max_logprobs == -1 or value is None or value <= max_logprobs:
        return None
    return f"Requested {kind} logprobs of {value}, which is greater than max allowed: {max_logprobs}"


def _int_keys(logit_bias: dict) -> dict[int, float]:
    """logit_bias with its keys as ints (token ids may come as strings, as in JSON); a key that is no
    integer, or a bias that is not a finite number, is a ValueError naming the field."""
    try:
        out = {int(token): float(bias) for token, bias in logit_bias.items()}
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias keys must be token ids (integers), got {list(logit_bias)[:4]}") from None
    check(all(math.isfinite(bias) for bias in out.values()), "logit_bias", logit_bias, "values must be finite")
    return out
