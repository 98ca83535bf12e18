"""LLMEngine: the synchronous engine. add_request / step / abort_request.

One step: the scheduler picks requests and token counts, the runner runs the model and samples, the
scheduler appends the tokens, and the output processor applies stop conditions and detokenizes.
"""
from __future__ import annotations

import atexit
import dataclasses
import gc
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from attention.backend import dtype_name
from attention.selector import select_backend
from engine.bad_words import bad_words_token_ids
from engine.config import EngineConfig, ModelConfig, checked_max_model_len
from engine.generation_defaults import default_sampling_fields, load_generation_config
from engine.model_runner import ModelRunner
from engine.output_processor import OutputProcessor
from engine.output_wire import PackedOutput
from engine.outputs import RequestOutput
from engine.pending_step import PendingStep
from engine.prompt_logprobs import PromptLogprobsResult
from engine.prompt_truncation import check_allowed_token_ids, check_logit_bias, truncate_prompt
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.structured_outputs import ChoiceConstraint
from kv_cache.block_manager import BlockManager
from models.loader import load_tokenizer, resolve_model
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.waiting_queue import check_priority

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The waiting queue holds `max_queue_len` requests already."""


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_free_blocks: int
    num_total_blocks: int


def _freeze_startup_heap() -> None:
    """Start-up left a large heap (model, tokenizer, graphs) that every full collection of the cyclic
    GC would walk again, a pause that grows with the heap, in the middle of a step; frozen, those
    objects are skipped and collections see only what serving allocates (as vLLM does). Unfrozen at
    exit, so that the interpreter's last collection still frees them (Triton's bindings report leaks)."""
    gc.collect()
    gc.freeze()
    atexit.unregister(gc.unfreeze)   # once, however many engines a process makes
    atexit.register(gc.unfreeze)


class LLMEngine:
    def __init__(self, config: EngineConfig, packed_outputs: bool = False) -> None:
        """packed_outputs: `step()` returns its outputs packed for the pipe (engine/output_wire.py), made
        from the step's deltas alone, as the engine's own process sends them (engine/engine_core.py)."""
        self.config = config
        resolved = resolve_model(config.model, config.revision, config.load_format, config.hf_overrides,
                                 config.trust_remote_code, config.download_dir)
        self.tokenizer = load_tokenizer(resolved, config.tokenizer, config.trust_remote_code,
                                        config.tokenizer_revision, config.download_dir)
        self.model_config = mc = ModelConfig.from_hf_config(resolved.hf_config)
        self.device = config.torch_device()
        self.dtype = config.torch_dtype(mc.checkpoint_dtype, self.device)
        self.max_model_len = checked_max_model_len(config.max_model_len, mc.derived_max_model_len)
        generation_config = load_generation_config(resolved.path)     # read once: EOS ids and sampling defaults
        self.eos_token_ids = self._eos_ids(mc, generation_config)
        # the model's sampling defaults (generation_config.json) for requests that leave a field unset
        self.default_sampling_fields: dict = default_sampling_fields(generation_config, config.generation_config)
        self.kv_cache_dtype = config.kv_cache_torch_dtype(self.dtype)
        choice = select_backend(self.device, self.dtype, mc.head_size, config.block_size, config.attention_backend,
                                kv_cache_dtype=self.kv_cache_dtype)
        logger.info("attention backend: %s, block size %d, KV cache %s (%s)", choice.backend.name,
                    choice.block_size, dtype_name(self.kv_cache_dtype), choice.reason)
        self.attention_backend = choice.backend.name
        budget = config.max_num_batched_tokens or max(8192, config.max_num_seqs)
        if not config.enable_chunked_prefill:
            budget = max(budget, self.max_model_len)
        load_format = "dummy" if resolved.is_preset else config.load_format
        self.runner = ModelRunner(config, mc, resolved.hf_config, resolved.path, load_format, choice, self.device,
                                  self.dtype, self.max_model_len, budget)
        self.max_model_len = self.runner.max_model_len     # lowered to the KV cache's length by max_model_len -1
        self.block_manager = BlockManager(self.runner.num_blocks, choice.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, budget, self.max_model_len,
                                                   config.enable_chunked_prefill, config.scheduling_policy),
                                   self.block_manager)
        self.outputs = OutputProcessor(self.tokenizer, packed=packed_outputs)
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self._pending: PendingStep | None = None
        self._prompt_logprob_requests: set[Request] = set()     # prompt logprobs still to come
        torch.manual_seed(config.seed)
        _freeze_startup_heap()

    def _eos_ids(self, mc: ModelConfig, generation_config: GenerationConfig | None) -> tuple[int, ...]:
        """EOS ids from config.json, generation_config.json (chat models list several; None: no file) and
        the tokenizer."""
        ids = set(mc.eos_token_ids)
        if generation_config is not None:
            eos = generation_config.eos_token_id
            ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0) -> None:
        """Queue a prompt (text or token ids); n > 1 fans out into n sequences. Raises ValueError on bad input.

        `params.output_kind` says what `step()` returns for this request (RequestOutputKind): CUMULATIVE
        outputs, DELTA outputs (the step's additions), or FINAL_ONLY: one output, once it is finished (no
        per-step detokenizing where no stop string reads the text: what the offline API wants).
        priority: lower is scheduled earlier under scheduling_policy "priority"; any other than 0 under "fcfs"
        is a ValueError (vLLM's message). The prompt's ids are cut to their last `truncate_prompt_tokens` (the
        outputs' prompt_token_ids are those; the prompt text stays whole), allowed_token_ids and logit_bias are
        checked against the vocabulary and bad_words and structured_outputs choices tokenized."""
        check_priority(priority, self.config.scheduling_policy)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        if self.outputs.ids_in_use([request_id, *child_ids]):     # a sequence's id is its request's, or "<id>#<i>"
            raise ValueError(f"request id {request_id!r} is already in use (by a request or one of its n > 1 "
                             f"sequences, named <id>#<i>)")
        prompt_text, ids = self._tokenize(prompt)
        ids = truncate_prompt(ids, params.truncate_prompt_tokens, self.max_model_len)
        check_allowed_token_ids(params.allowed_token_ids, self.model_config.vocab_size)
        check_logit_bias(params.logit_bias, self.model_config.vocab_size)
        params = params.with_vocab_logprobs(self.model_config.vocab_size)
        params.check_max_logprobs(self.config.max_logprobs)
        bad_words = bad_words_token_ids(params.bad_words, self.tokenizer, self.model_config.vocab_size)
        choice = self._choice_constraint(params)
        params = self._cap_max_tokens(params, len(ids))
        if self.config.max_queue_len is not None and len(self.scheduler.waiting) >= self.config.max_queue_len:
            raise QueueFullError(f"the waiting queue is full ({self.config.max_queue_len} requests); retry later")
        children = []
        for i, child_id in enumerate(child_ids):
            req = Request(child_id, ids, _child_params(params, i), self.eos_token_ids, priority=priority,
                          bad_words_token_ids=bad_words, choice=choice)
            if arrival_time is not None:
                req.arrival_time = arrival_time
            children.append(req)
        if children[0].prompt_logprobs is not None and not children[0].prompt_logprobs.done:
            self._prompt_logprob_requests.add(children[0])
        self.outputs.add_group(request_id, prompt_text, ids, children)
        self.num_prompt_tokens += len(ids) * params.n
        for req in children:
            self.scheduler.add_request(req)

    def _choice_constraint(self, params: SamplingParams) -> ChoiceConstraint | None:
        so = params.structured_outputs
        if so is None:
            return None
        return ChoiceConstraint.build(so.choice, self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        if not ids:
            raise ValueError("prompt must not be empty (got no token ids)")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), got {bad[:5]}")
        return None, ids

    def _cap_max_tokens(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        """max_tokens capped to the room the prompt leaves within max_model_len (None: all of it), as vLLM's
        offline engine: only a prompt that leaves no room is refused; a larger max_tokens is accepted and the
        request stops with finish_reason "length" at max_model_len. Everything sized from max_tokens (n > 1
        sequences, the async scheduler's look-ahead) sees the capped value; the KV cache holds max_model_len
        tokens (ModelRunner refuses a smaller one, or lowers an auto max_model_len to it), so a request always
        fits once alone. min_tokens is capped with it (EOS stays banned up to the end either way). The server
        refuses prompt + max_tokens > max_model_len itself, with a 400 (server/serving.py `check_prompt`)."""
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ValueError(f"the prompt has {prompt_len} tokens, which leaves no room to generate within "
                             f"max_model_len={self.max_model_len}; shorten the prompt")
        if params.max_tokens is None or params.max_tokens > room:
            params = dataclasses.replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))
        return params

    def abort_request(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            for req in self.outputs.pop_group(request_id):
                self.scheduler.finish_request(req, RequestStatus.FINISHED_ABORTED)
                self._prompt_logprob_requests.discard(req)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._pending is not None

    def step(self) -> list[RequestOutput] | list[PackedOutput]:
        """Schedule and launch a step; then finish the previous one (overlapped) or this one (sync).
        Returns the RequestOutputs it made (of each request's output kind; CUMULATIVE ones are independent
        snapshots), or with packed_outputs their packed form.

        With async scheduling the host schedules and prepares step k+1 while the GPU still runs step k;
        a request's token from step k is fed to step k+1 straight from the device. Requests whose
        sampling needs their full output history (penalties) make the engine wait first.
        """
        outputs: list = []
        if self._pending is not None and not self._can_overlap():
            outputs += self._finish(self._pending)
            self._pending = None
        out = self.scheduler.schedule()
        launched = None
        if not out.is_empty:
            launched = self.runner.launch(out, prompt_logprobs=bool(self._prompt_logprob_requests))
            for sched in out.scheduled:
                if sched.samples:
                    sched.request.num_inflight += 1
        if self._pending is not None:
            outputs += self._finish(self._pending)
        self._pending = launched
        if launched is not None and not self.config.async_scheduling:
            outputs += self._finish(launched)
            self._pending = None
        return outputs

    def _can_overlap(self) -> bool:
        return self.config.async_scheduling and not any(
            r.sampling_params.uses_output_history for r in self.scheduler.running)

    def _finish(self, pending: PendingStep) -> list[RequestOutput] | list[PackedOutput]:
        """Take a launched step's tokens: append, check stops, detokenize, build outputs."""
        result = pending.result()
        if result.prompt_logprobs:
            self._take_prompt_logprobs(result.prompt_logprobs)
        progressed = self.scheduler.update_from_output(pending.out, result.sampled)
        self.num_generation_tokens += len(progressed)
        logprobs = {id(s.request): lp for s, lp in zip(pending.out.scheduled, result.logprobs) if lp is not None}
        for req in progressed:
            status = self.outputs.process_token(req, logprobs.get(id(req)), self.max_model_len)
            if status is not None:
                self.scheduler.finish_request(req, status)
        return self.outputs.make_outputs(progressed)     # forgets the groups that finished

    def _take_prompt_logprobs(self, results: list[PromptLogprobsResult]) -> None:
        """Append a step's prompt logprobs to their requests (before the step's tokens: a request's
        outputs carry them complete)."""
        for req, entries in results:
            state = req.prompt_logprobs
            state.entries += entries
            if state.done:
                self._prompt_logprob_requests.discard(req)

    def get_stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage, prefix_cache_queries=bm.num_prefix_queries,
            prefix_cache_hits=bm.num_prefix_hits, num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens, num_generation_tokens=self.num_generation_tokens,
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks)


def _child_params(params: SamplingParams, index: int) -> SamplingParams:
    """The params of sequence `index` of a request with n > 1: seed + index where a seed is given; the
    prompt logprobs are computed by the first sequence only (its RequestOutput's are the group's)."""
    if index == 0 or (params.seed is None and params.prompt_logprobs is None):
        return params
    seed = None if params.seed is None else params.seed + index
    return dataclasses.replace(params, seed=seed, prompt_logprobs=None)
