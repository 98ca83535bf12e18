"""vLLM's `truncate_prompt_tokens` request extra: the server keeps each prompt's last k tokens before its own
prompt checks (max_model_len, usage, echo), as vLLM truncates at tokenization; the engine's add_request,
handed the same SamplingParams, then finds nothing more to cut."""
from __future__ import annotations

from engine.prompt_truncation import truncate_prompt
from server.errors import from_value_error


def truncate_prompts(prompts: list[list[int]], truncate_prompt_tokens: int | None,
                     max_model_len: int) -> list[list[int]]:
    """Each prompt's last `truncate_prompt_tokens` ids (-1: max_model_len; None: unchanged); a bad value is
    a 400 naming the field (vLLM's messages)."""
    try:
        return [truncate_prompt(ids, truncate_prompt_tokens, max_model_len) for ids in prompts]
    except ValueError as exc:
        raise from_value_error(exc, ("truncate_prompt_tokens",), default="truncate_prompt_tokens") from exc
