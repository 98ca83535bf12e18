"""What completions and chat share: request -> SamplingParams, prompt checks, admission, stream merge,
client-disconnect handling and SSE framing."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import fields
from typing import NamedTuple

from fastapi import Request
from pydantic import BaseModel

from engine.engine_client import EngineClient, EngineDeadError
from engine.llm_engine import QueueFullError
from engine.outputs import Logprob as EngineLogprob, LogprobsDict, RequestOutput
from engine.sampling_params import RequestOutputKind, SamplingParams
from scheduler.waiting_queue import check_priority
from server.errors import APIError, from_value_error
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.protocol import Logprob, PromptLogprobs
from server.request_fields import check_logprob_caps, logit_bias, structured_outputs

_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))
_COPIED = ("n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
           "frequency_penalty", "repetition_penalty", "ignore_eos", "min_tokens", "skip_special_tokens",
           "include_stop_str_in_output", "allowed_token_ids", "truncate_prompt_tokens", "bad_words")
DONE = "data: [DONE]\n\n"
logger = logging.getLogger(__name__)


class ResponseHead(NamedTuple):
    """What every response and stream chunk of one request carries: its id and the model name."""

    id: str
    model: str


class Serving:
    """Binds the engine, the served model names, the metrics and the server's options (chat template,
    reasoning and tool-call parsers: ServerOptions) for the endpoint handlers."""

    def __init__(self, async_engine: EngineClient, served_model_names: tuple[str, ...], metrics: ServerMetrics,
                 options: ServerOptions | None = None) -> None:
        options = options or ServerOptions()
        self.engine = async_engine
        self.chat_template = options.chat_template
        self.reasoning_parser = options.reasoning_parser
        self.tool_call_parser = options.tool_call_parser
        self.auto_tool_choice = options.enable_auto_tool_choice    # tool_choice "auto" parses the answers' calls
        self.response_role = options.response_role
        self.log_requests = options.enable_log_requests
        self.tokens_as_ids = options.return_tokens_as_token_ids
        self.tokenizer = async_engine.tokenizer
        self.model_names = served_model_names      # requests may name any; the first is the main one
        self.model_name = served_model_names[0]
        self.max_model_len = async_engine.max_model_len
        self.max_logprobs: int = async_engine.config.max_logprobs
        self.metrics = metrics
        # the model's generation_config.json defaults: max_tokens apart (default_max_tokens), each is
        # used where the request leaves its field unset
        defaults = dict(async_engine.default_sampling_fields)
        self.model_max_tokens: int | None = defaults.pop("max_tokens", None)
        self.sampling_defaults = defaults

    def check_model(self, name: str | None) -> str:
        """The model name the response carries: the request's (one of the served names; else a 404), or
        the first served name where the request names none (as vLLM's)."""
        if name is None:
            return self.model_name
        if name not in self.model_names:
            served = ", ".join(repr(n) for n in self.model_names)
            raise APIError(404, f"model {name!r} does not exist; this server serves {served}", "model")
        return name

    def sampling_params(self, req, max_tokens: int, logprobs: int | None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams from the request's fields, the model's defaults for those it leaves unset; a rule
        it breaks becomes a 400 naming the field. A streamed request's outputs are the steps' deltas (DELTA),
        another's the final one alone (FINAL_ONLY), as vLLM's server asks."""
        check_logprob_caps(req, self.max_logprobs)
        kwargs = dict(self.sampling_defaults)
        kwargs.update({name: getattr(req, name) for name in _COPIED if getattr(req, name) is not None})
        kwargs.update(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                      logit_bias=logit_bias(req.logit_bias), structured_outputs=structured_outputs(req),
                      output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY)
        try:
            return SamplingParams(**kwargs)
        except ValueError as exc:
            raise from_value_error(exc, _SAMPLING_FIELDS) from exc

    def check_prompt(self, token_ids: list[int], max_tokens: int | None, param: str = "prompt") -> None:
        """400 for an empty prompt or one that leaves no room for max_tokens (at least 1) within max_model_len
        (vLLM's server refuses it; the engine itself would cap max_tokens and stop at max_model_len)."""
        if not token_ids:
            raise APIError(400, f"{param} must not be empty", param)
        if len(token_ids) + (max_tokens or 1) > self.max_model_len:
            asked = f"max_tokens {max_tokens}" if max_tokens else "at least 1 generated token"
            raise APIError(400, f"this model's max_model_len is {self.max_model_len} tokens, but the request needs "
                                f"{len(token_ids) + (max_tokens or 1)} ({len(token_ids)} prompt tokens + {asked}); "
                                f"shorten the {param} or lower max_tokens", param)

    def default_max_tokens(self, token_ids: list[int]) -> int:
        """max_tokens for a request that gives none: what fits within max_model_len, at most the model's
        max_new_tokens (generation_config.json)."""
        room = max(1, self.max_model_len - len(token_ids))
        return room if self.model_max_tokens is None else min(room, self.model_max_tokens)

    async def start(self, prefix: str, prompts: list[list[int]], params: SamplingParams,
                    priority: int = 0) -> list[AsyncIterator[RequestOutput]]:
        """Admit one engine request per prompt at `priority` (a 400 naming it where the engine's
        scheduling policy refuses it, vLLM's message); engine refusals become API errors before any byte
        is sent."""
        try:
            check_priority(priority, self.engine.config.scheduling_policy)
        except ValueError as exc:
            raise APIError(400, str(exc), "priority") from exc
        base = f"{prefix}-{uuid.uuid4().hex}"
        streams: list[AsyncIterator[RequestOutput]] = []
        try:
            for i, ids in enumerate(prompts):
                self._log_request(f"{base}-{i}", ids, params)
                streams.append(await self.engine.add_request(f"{base}-{i}", ids, params, priority))
        except BaseException as exc:
            for stream in streams:
                await stream.aclose()
            raise _engine_error(exc) from exc
        return streams

    def _log_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """vLLM's request log (--enable-log-requests): params and prompt length at INFO, the ids at DEBUG."""
        if self.log_requests:
            logger.info("Received request %s: params: %s, num_prompt_tokens: %d.", request_id, params,
                        len(prompt_ids))
            logger.debug("Request %s details: prompt_token_ids: %s.", request_id, prompt_ids)

    def decode_token(self, token_id: int) -> str:
        """One token's text: the engine's Logprob.decoded_token is this too (engine/output_processor.py)."""
        return self.tokenizer.decode([token_id])

    def tokens_as_ids_for(self, req) -> bool:
        """vLLM's: the request's `return_tokens_as_token_ids` where it gives one, else
        --return-tokens-as-token-ids."""
        asked = req.return_tokens_as_token_ids
        return self.tokens_as_ids if asked is None else asked

    def logprob_token(self, token_id: int, text: str | None, as_id: bool) -> str:
        """How logprobs name a token: its text (`text`, else decoded), or with `as_id` (tokens_as_ids_for)
        "token_id:{id}" (vLLM's: any token, even a partial UTF-8 character, named exactly)."""
        if as_id:
            return f"token_id:{token_id}"
        return self.decode_token(token_id) if text is None else text

    def prompt_logprobs(self, out: RequestOutput) -> PromptLogprobs | None:
        """vLLM's prompt_logprobs of `out` (None where it has none): None for the first prompt token,
        then {token id: Logprob} per prompt token, the prompt token first with its rank, then the top k
        (the engine's Logprobs, -inf as finite_logprob's)."""
        if out.prompt_logprobs is None:
            return None
        return [None if entry is None else {token: _json_logprob(lp) for token, lp in entry.items()}
                for entry in out.prompt_logprobs]


def finite_logprob(logprob: float) -> float:
    """A logprob as vLLM's responses carry it: -inf (a masked token) as -9999.0, so that JSON holds it."""
    return max(logprob, -9999.0)


def token_logprob(entry: LogprobsDict, token_id: int) -> float:
    """The logprob of `token_id` in one position's LogprobsDict, -inf where it is not there."""
    lp = entry.get(token_id)
    return float("-inf") if lp is None else lp.logprob


def _json_logprob(lp: EngineLogprob) -> Logprob:
    return Logprob(logprob=finite_logprob(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token)


def _engine_error(exc: BaseException) -> BaseException:
    if isinstance(exc, APIError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc))
    if isinstance(exc, ValueError):
        return from_value_error(exc, ("prompt", "max_tokens") + _SAMPLING_FIELDS, default="prompt")
    return APIError(500, f"internal error: {exc!r}")


def api_error(exc: BaseException) -> APIError:
    """Any exception raised while serving, as the APIError the client sees."""
    err = _engine_error(exc)
    return err if isinstance(err, APIError) else APIError(500, f"internal error: {exc!r}")


async def merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several request streams as (stream index, output), each read only as the consumer reads
    (a consumer that falls behind gets their unread outputs merged); closing this closes (aborts) them all."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    merged: asyncio.Queue = asyncio.Queue(maxsize=1)    # pumps read only as the consumer does (unread outputs merge)

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await merged.put((i, out))
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
            await merged.put((i, exc))
        await merged.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await merged.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def until_disconnect(request: Request, work: Awaitable) -> object:
    """Run `work`; if the client disconnects first, cancel it (which aborts its engine requests)."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.create_task(_wait_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise APIError(499, "client disconnected")
    return work_task.result()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def sse_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events` (SSE strings), then `data: [DONE]`. An error raised mid-stream (the 200 status line is
    already sent) goes out in-band in the OpenAI error shape before [DONE]; closing this stream
    (client gone) closes `events` at once."""
    try:
        async with contextlib.aclosing(events) as inner:
            async for event in inner:
                yield event
    except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band
        yield api_error(exc).sse()
    yield DONE


def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"
