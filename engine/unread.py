"""Unread: one request's outputs that its asyncio consumer has not read yet (as vLLM's output collector).

A consumer that falls behind the engine reads one output for all the steps it missed, merged as its
request's RequestOutputKind says: CUMULATIVE keeps the newest output (its deltas, when read, are all since
the last read: slices of its cumulative fields); DELTA keeps the unread outputs and joins their deltas once,
when read (O(what they added), never the output so far); FINAL_ONLY has one output, never merged.
"""
from __future__ import annotations

import asyncio
import dataclasses

from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import RequestOutputKind


class Unread:
    """A request's outputs that its consumer has not read yet, on its event loop: what `get` returns is one
    RequestOutput for them all (see the module), then the engine's error if it failed."""

    def __init__(self, kind: RequestOutputKind = RequestOutputKind.CUMULATIVE) -> None:
        self.cumulative = kind is RequestOutputKind.CUMULATIVE
        self._outputs: list[RequestOutput] = []         # CUMULATIVE: the newest alone
        self._starts: dict[int, tuple[int, int]] = {}    # CUMULATIVE: choice -> (chars, tokens) read before
        self._merged = False                             # CUMULATIVE: a newer output replaced the first unread
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(item, BaseException):
            self._error = item
        elif not self.cumulative:
            self._outputs.append(item)
        elif not self._outputs:
            self._outputs.append(item)
            self._starts, self._merged = {c.index: _read_before(c) for c in item.outputs}, False
        else:
            self._outputs[0], self._merged = item, True
        self._ready.set()

    async def get(self) -> RequestOutput | BaseException:
        """The unread output (its deltas: all since the last read), else the error; waits for one."""
        while not self._outputs and self._error is None:
            self._ready.clear()
            await self._ready.wait()
        if not self._outputs:
            return self._error
        outputs, self._outputs = self._outputs, []
        if not self.cumulative:
            return join_deltas(outputs)
        out = outputs[0]
        if not self._merged:
            return out
        merged = []
        for c in out.outputs:
            chars, tokens = self._starts.get(c.index) or _read_before(c)
            merged.append(dataclasses.replace(c, text_delta=c.text[chars:], token_ids_delta=c.token_ids[tokens:]))
        return dataclasses.replace(out, outputs=merged)


def join_deltas(outputs: list[RequestOutput]) -> RequestOutput:
    """DELTA outputs of one request, oldest first, as one: each sequence's text, token_ids and logprobs joined
    (O(their size)), its newest finish and stop reasons; the request's newest state, and the prompt logprobs
    of the output that had them (the first)."""
    if len(outputs) == 1:
        return outputs[0]
    parts: dict[int, list[CompletionOutput]] = {}
    for out in outputs:
        for c in out.outputs:
            parts.setdefault(c.index, []).append(c)
    last = outputs[-1]
    prompt_logprobs = next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None)
    return dataclasses.replace(last, outputs=[_join(p) for p in parts.values()], prompt_logprobs=prompt_logprobs)


def _join(parts: list[CompletionOutput]) -> CompletionOutput:
    """One sequence's DELTA parts as one."""
    if len(parts) == 1:
        return parts[0]
    text = "".join(c.text for c in parts)
    token_ids = [t for c in parts for t in c.token_ids]
    with_logprobs = [c.logprobs for c in parts if c.logprobs is not None]
    logprobs = [e for lps in with_logprobs for e in lps] if with_logprobs else None
    last = parts[-1]
    return CompletionOutput(index=last.index, text=text, token_ids=token_ids, finish_reason=last.finish_reason,
                            stop_reason=last.stop_reason, logprobs=logprobs, text_delta=text,
                            token_ids_delta=token_ids)


def _read_before(comp: CompletionOutput) -> tuple[int, int]:
    """The characters and tokens of `comp` that came before its deltas."""
    return len(comp.text) - len(comp.text_delta), len(comp.token_ids) - len(comp.token_ids_delta)
