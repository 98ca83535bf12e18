"""The server's process does per step, per DELTA request, work in what the step added, not in the output so
far: its reader thread rebuilds each packed output (OutputAssembler) and hands it to the request's Unread,
which its consumer reads at once or, fallen behind, every few steps (the unread outputs joined).

Deterministic, no timing: tracemalloc's peak above what was allocated before a read window (a step, or
eight) counts every copy the window makes, kept or dropped. A DELTA request's windows cost the same at
the end of an 8,000-token output as of a 4,000-token one; the same measure sees a CUMULATIVE request's
copies grow with its output (its token ids and logprobs copied per step: 16 bytes a token)."""
from __future__ import annotations

import gc
import tracemalloc

from engine.output_wire import OutputAssembler, pack_completion, pack_prompt
from engine.outputs import Logprob
from engine.sampling_params import RequestOutputKind
from engine.unread import Unread
from tests.engine.test_unread import read_now

DELTA, CUMULATIVE = RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE


def packed_steps(length: int, kind: RequestOutputKind) -> list[tuple]:
    """One request's packed outputs as the engine's process sends them: a token (its text, its logprobs with
    one alternative) per step, the prompt and the kind with the first, finished with the last."""
    steps = []
    for i in range(length):
        token, last = 97 + i % 26, i == length - 1
        logprobs = [{token: Logprob(-0.5, 1, chr(token)), 98: Logprob(-1.5, 2, "b")}]
        completion = pack_completion(0, chr(token), [token], "length" if last else None, None, logprobs)
        prompt = pack_prompt(None, [1, 2, 3], None, kind) if i == 0 else None
        steps.append(("r", prompt, last, 0, {}, [completion]))
    return steps


def window_bytes(length: int, kind: RequestOutputKind, lag: int) -> list[int]:
    """Per read window of `lag` steps (each unpacked and put, then one read), the bytes it allocates above
    what was allocated before it (its peak: copies made and dropped count, and what it keeps)."""
    steps, assembler, unread = packed_steps(length, kind), OutputAssembler(), Unread(kind)
    costs = []
    gc.disable()
    tracemalloc.start()
    try:
        for start in range(0, length, lag):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            for packed in steps[start:start + lag]:
                unread.put(assembler.unpack(packed))
            out = read_now(unread)
            assert len(out.outputs[0].token_ids) == (min(lag, length - start) if kind is DELTA else
                                                     min(start + lag, length))
            del out
            costs.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
        gc.enable()
    return costs


def test_a_delta_requests_steps_cost_the_same_at_4000_and_8000_tokens():
    for lag in (1, 8):                 # a consumer that reads every step, and one that falls behind
        short, long = window_bytes(4000, DELTA, lag), window_bytes(8000, DELTA, lag)
        steady = max(short[10:])
        assert max(long[10:]) <= steady + 64, (lag, steady, max(long[10:]))
        assert steady < 2500 * lag, (lag, steady)       # a step's output: its objects, not the text so far


def test_the_measure_sees_a_cumulative_requests_copies_grow():
    """Unpacking CUMULATIVE outputs copies the ids and logprobs so far: the last steps of 8000 tokens cost
    about 7900 * 16 bytes each, those of 4000 half as much."""
    short, long = window_bytes(4000, CUMULATIVE, 1), window_bytes(8000, CUMULATIVE, 1)
    assert min(long[-100:]) > 7800 * 16 and min(long[-100:]) > 1.9 * max(short[-100:])
