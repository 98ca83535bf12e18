"""What the engine hands back: RequestOutput with one CompletionOutput per sequence (vLLM's shape)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """vLLM's: one token's logprob at a position, its rank there (vLLM's count: the tokens whose logprob is
    at least as large; 1: the most likely, without a tie) and its text (`tokenizer.decode([token_id])`, as the server
    decodes one token)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's per-position logprobs: token id -> Logprob, the scored (sampled or prompt) token first, then the
# top k most likely first (ranks 1..k; the scored token once, with its own rank, where it is among them)
LogprobsDict = dict[int, Logprob]

# a FINAL_ONLY RequestOutput's `metrics` key: the time.monotonic() of each engine step that brought the request
# tokens (its only output comes at the end; the server's latency histograms read these)
TOKEN_TIMES = "token_times"

# what the runner hands the output processor per scored position, before decoding: (token ids, the
# scored token first then the top k; their logprobs; the scored token's rank)
TokenLogprobs = tuple[list[int], list[float], int]


@dataclass
class CompletionOutput:
    """One generated sequence. `text`, `token_ids` and `logprobs` are cumulative (RequestOutputKind
    CUMULATIVE and FINAL_ONLY) or, with DELTA, only what was added since the request's previous output; the
    `*_delta` fields hold only what this output added, whatever the kind (with DELTA: the same as text and
    token_ids). logprobs: per token, a LogprobsDict of the sampled token and the top alternatives asked for;
    cumulative_logprob their sampled tokens' sum (with DELTA: over this output's tokens)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[LogprobsDict] | None = None
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)

    def finished(self) -> bool:
        """vLLM's: a method (RequestOutput.finished is a plain bool)."""
        return self.finish_reason is not None

    @property
    def cumulative_logprob(self) -> float | None:
        """vLLM's: the sum of the sampled tokens' logprobs; None where logprobs were not asked for."""
        if self.logprobs is None:
            return None
        return sum(lp[token].logprob if token in lp else float("-inf")
                   for token, lp in zip(self.token_ids, self.logprobs))


@dataclass
class RequestOutput:
    """One user request's state: its prompt and one CompletionOutput per sequence. prompt_logprobs
    (SamplingParams.prompt_logprobs, vLLM's shape): one entry per prompt token, None for the first, then
    a LogprobsDict {the prompt token: its Logprob given the tokens before it (with its rank), then the
    top prompt_logprobs tokens at that position, most likely first}; None when not asked for."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)
    prompt_logprobs: list[LogprobsDict | None] | None = None
