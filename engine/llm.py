"""LLM: the offline API. `LLM(model, **engine_args).generate(prompts, sampling_params)`, and `.chat(messages)`
for conversations rendered through the chat template."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from engine.chat_template import render_chat
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import RequestOutputKind, SamplingParams

Prompt = str | list[int]


class LLM:
    """Offline batched generation.

    `model` is a preset (`preset:tiny-qwen3`, `preset:qwen3-0.6b`, ...), a local Hugging Face folder, or a
    hub id; keyword arguments are EngineConfig fields (dtype, max_model_len, attention_backend, ...).
    """

    def __init__(self, model: str, **engine_args) -> None:
        _configure_logging()
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json defaults (temperature, top_p, top_k,
        min_p, repetition_penalty, max_tokens) unless the engine was built with generation_config="vllm"."""
        return SamplingParams(**self.engine.default_sampling_fields)

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams |
                 Sequence[SamplingParams] | None = None, use_tqdm: bool = True,
                 priority: Sequence[int] | None = None) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in input order.

        prompts: a string, a list of strings, a list of token ids, or a list of token-id lists; any prompt
        may also be a dict as vLLM's, {"prompt": text} or {"prompt_token_ids": ids}.
        sampling_params: one for all prompts, or one per prompt (default: `get_default_sampling_params()`,
        the model's defaults); explicit ones are used as given, but for their output_kind: each request
        returns one final output (FINAL_ONLY, as vLLM's LLM; the caller's objects are not changed).
        priority: one int per prompt, lower scheduled earlier (vLLM's; needs scheduling_policy="priority"
        unless all are 0); None: all 0.
        """
        prompts = _as_prompt_list(prompts)
        params = sampling_params if sampling_params is not None else self.get_default_sampling_params()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        elif len(params) != len(prompts):
            raise ValueError(f"sampling_params has {len(params)} entries but there are {len(prompts)} prompts; "
                             "pass one SamplingParams or one per prompt")
        params = _final_only(params)
        priorities = _per_prompt_priority(priority, len(prompts))
        ids = [str(next(self._ids)) for _ in prompts]
        try:
            for request_id, prompt, p, prio in zip(ids, prompts, params, priorities):
                self.engine.add_request(request_id, prompt, p, priority=prio)
        except Exception:
            self.engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict] | Sequence[list[dict]], sampling_params: SamplingParams |
             Sequence[SamplingParams] | None = None, use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True, chat_template_kwargs: dict | None = None,
             tools: list[dict] | None = None, priority: Sequence[int] | None = None,
             continue_final_message: bool = False) -> list[RequestOutput]:
        """Generate a reply to each conversation; outputs come back in conversation order (vLLM's signature).

        messages: one conversation (a list of {"role", "content"} dicts) or a list of conversations. Each is
        rendered with the chat template (`chat_template`, a Jinja string, else the tokenizer's; with
        `chat_template_kwargs` as extra template variables and `tools`, OpenAI-shaped tool dicts, as its
        `tools`; with `continue_final_message` and add_generation_prompt=False the last message is left
        open for the model to go on with) and tokenized, then generated as `generate()` does with
        `sampling_params` (None: the model's defaults) and `priority` (one int per conversation). The
        replies' tool calls are not parsed (the server's --tool-call-parser does).
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if not conversations:
            return []
        tokenizer = self.get_tokenizer()
        prompts = [render_chat(tokenizer, conversation, add_generation_prompt, chat_template, chat_template_kwargs,
                               tools, continue_final_message) for conversation in conversations]
        return self.generate(prompts, sampling_params, use_tqdm, priority)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Generating", unit="req", disable=not use_tqdm, dynamic_ncols=True)
        start, tokens_before = time.perf_counter(), self.engine.num_generation_tokens
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
                    bar.update(1)
            if use_tqdm:
                num_out_tokens = self.engine.num_generation_tokens - tokens_before
                elapsed = time.perf_counter() - start
                bar.set_postfix_str(f"{num_out_tokens / max(elapsed, 1e-9):.1f} out tok/s", refresh=False)
        bar.close()
        return [finished[i] for i in ids]


def _final_only(params: Sequence[SamplingParams]) -> list[SamplingParams]:
    """The params with output_kind FINAL_ONLY: copies where they ask otherwise (one per distinct object, so a
    SamplingParams shared by every prompt is copied once), never the caller's changed."""
    copies: dict[int, SamplingParams] = {}
    for p in params:
        if id(p) not in copies:
            copies[id(p)] = p if p.output_kind is RequestOutputKind.FINAL_ONLY else dataclasses.replace(
                p, output_kind=RequestOutputKind.FINAL_ONLY)
    return [copies[id(p)] for p in params]


def _as_prompt_list(prompts) -> list[Prompt]:
    """One prompt or a list of them as a list of texts / token-id lists. A prompt may also be one of
    vLLM's prompt dicts: {"prompt": text} (TextPrompt) or {"prompt_token_ids": ids} (TokensPrompt)."""
    if isinstance(prompts, (str, dict)):
        return [_unwrap(prompts)]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not prompts:
        raise ValueError("prompts must not be empty")
    return [_unwrap(p) for p in prompts]


def _per_prompt_priority(priority: Sequence[int] | None, num_prompts: int) -> Sequence[int]:
    """One priority per prompt (None: all 0); LLMEngine.add_request checks each value."""
    if priority is None:
        return [0] * num_prompts
    if isinstance(priority, (int, str)):
        raise ValueError(f"priority must be a list of ints, one per prompt, got {priority!r}")
    if len(priority) != num_prompts:
        raise ValueError(f"priority has {len(priority)} entries but there are {num_prompts} prompts; "
                         "pass one int per prompt")
    return list(priority)


def _unwrap(prompt) -> Prompt:
    """A vLLM prompt dict's text or token ids; any other prompt as it is."""
    if not isinstance(prompt, dict):
        return prompt
    if set(prompt) == {"prompt"}:
        return prompt["prompt"]
    if set(prompt) == {"prompt_token_ids"}:
        return list(prompt["prompt_token_ids"])
    raise ValueError(f"a prompt dict must have exactly one key, 'prompt' (text) or 'prompt_token_ids' "
                     f"(token ids), got keys {sorted(prompt)}")


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
