"""The OutputProcessor's packed mode (the engine's own process): each output is made from the step's deltas
as engine/output_wire.py packs them, equal to packing the snapshot outputs (random outputs: stop strings
with and without include_stop_str_in_output, min_tokens, stop and EOS tokens, logprobs, n > 1, prompt
logprobs, each output kind, sequences that skip steps, multi-byte characters); a step's transient work does
not grow with the output; and the default mode's CUMULATIVE outputs stay independent snapshots."""
from __future__ import annotations

import copy
import dataclasses
import gc
import random
import tracemalloc
from types import SimpleNamespace

import pytest

from engine import output_processor
from engine.output_processor import OutputProcessor
from engine.output_wire import OutputAssembler, pack_output
from engine.request import Request
from engine.sampling_params import RequestOutputKind, SamplingParams
from models.tokenizer import byte_tokenizer

TOKENIZER = byte_tokenizer()
EOS = TOKENIZER.eos_token_id
# bytes: letters, a space, the two bytes of "é" and the first of a 4-byte character (some texts end in one)
TOKENS = [*b"abc ", 0xC3, 0xA9, 0xF0]
STOPS = ["ab", "c a", "é", "bcb", "aaaa"]


def random_params(rng: random.Random) -> SamplingParams:
    return SamplingParams(
        n=rng.choice([1, 1, 2, 3]), max_tokens=rng.randrange(3, 60), min_tokens=rng.choice([0, 0, 3]),
        stop=rng.sample(STOPS, rng.randrange(1, 3)) if rng.random() < 0.7 else None,
        include_stop_str_in_output=rng.random() < 0.3, stop_token_ids=[0xF0] if rng.random() < 0.2 else None,
        logprobs=rng.choice([None, 0, 2]), prompt_logprobs=rng.choice([None, None, 1]), seed=1)


def make_group(processor: OutputProcessor, request_id: str, params: SamplingParams,
               prompt: list[int] = [*b"hi ", 0xC3]) -> list[Request]:    # noqa: B006 - not changed
    """A group of n sequences as LLMEngine.add_request makes it (prompt logprobs: the first sequence's). The
    default prompt ends inside a character: the output completes it."""
    reqs = [Request(request_id if params.n == 1 else f"{request_id}#{i}", prompt,
                    params if i == 0 else dataclasses.replace(params, prompt_logprobs=None), (EOS,))
            for i in range(params.n)]
    processor.add_group(request_id, None, prompt, reqs)
    return reqs


def random_kind(rng: random.Random) -> RequestOutputKind:
    draw = rng.random()
    return (RequestOutputKind.CUMULATIVE if draw < 0.6 else RequestOutputKind.DELTA if draw < 0.8
            else RequestOutputKind.FINAL_ONLY)


@pytest.fixture
def step_clock(monkeypatch):
    """The output processor's clock (FINAL_ONLY outputs' token times) as a counter the test advances."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(output_processor, "time", SimpleNamespace(monotonic=lambda: clock.now))
    return clock


def token_logprobs(token: int, k: int) -> tuple[list[int], list[float], int]:
    return [token, *TOKENS[:k]], [-0.5, *(-1.0 - i for i in range(k))], 2


def feed(processor: OutputProcessor, reqs: list[Request], token: int) -> None:
    """The step's token for one sequence, as LLMEngine._finish takes it (the scheduler finishes it)."""
    for req in reqs:
        req.append_output_token(token)
        k = req.sampling_params.logprobs
        status = processor.process_token(req, None if k is None else token_logprobs(token, k), 10**6)
        if status is not None:
            req.status = status


def run_both(seed: int, clock: SimpleNamespace) -> tuple[list, list, dict]:
    """The same random requests through both modes: (snapshot outputs, packed outputs), step by step, and
    each request's output kind."""
    rng = random.Random(seed)
    snap, packed = OutputProcessor(TOKENIZER), OutputProcessor(TOKENIZER, packed=True)
    groups, kinds = [], {}
    for g in range(4):
        params = dataclasses.replace(random_params(rng), output_kind=random_kind(rng))
        kinds[f"r{g}"] = params.output_kind
        groups.append((make_group(snap, f"r{g}", params), make_group(packed, f"r{g}", params)))
    steps_snap, steps_packed = [], []
    for step in range(80):
        clock.now = float(step)
        progressed_snap, progressed_packed = [], []
        for reqs_snap, reqs_packed in groups:
            first = reqs_snap[0].prompt_logprobs
            if first is not None and not first.done and step == 2:      # the first sequence's, a prompt chunk
                for state in (first, reqs_packed[0].prompt_logprobs):  # at a time: the others go on meanwhile
                    state.entries += [token_logprobs(t, 1) for t in b"i \xc3"]
            for a, b in zip(reqs_snap, reqs_packed):
                waits = a.prompt_logprobs is not None and not a.prompt_logprobs.done
                if waits or a.is_finished or rng.random() < 0.2:       # a sequence that skips the step
                    continue
                token = EOS if rng.random() < 0.03 else rng.choice(TOKENS)
                feed(snap, [a], token)
                feed(packed, [b], token)
                progressed_snap.append(a)
                progressed_packed.append(b)
        steps_snap.append(snap.make_outputs(progressed_snap))
        steps_packed.append(packed.make_outputs(progressed_packed))
    assert not snap.groups and not packed.groups            # every group finished and was forgotten
    return steps_snap, steps_packed, kinds


def test_packed_outputs_equal_packing_the_snapshot_outputs(step_clock):
    """Per step, the packed mode's outputs are the tuples engine_core made before of the snapshot outputs
    (pack_output, the prompt and the output kind with each request's first), and the OutputAssembler
    rebuilds the snapshot outputs (CUMULATIVE ones cumulative, DELTA and FINAL_ONLY ones as they are)."""
    seen = set()
    for seed in range(30):
        steps_snap, steps_packed, kinds = run_both(seed, step_clock)
        started, assembler = set(), OutputAssembler()
        for outs, packed in zip(steps_snap, steps_packed):
            want = []
            for out in outs:
                want.append(pack_output(out, out.request_id not in started, kinds[out.request_id]))
                started.add(out.request_id)
                seen.update((c.finish_reason, c.stop_reason is not None, c.logprobs is not None,
                             kinds[out.request_id]) for c in out.outputs)
            assert packed == want
            assert [assembler.unpack(p) for p in packed] == outs
    for kind in RequestOutputKind:
        assert {("stop", True, True, kind), ("stop", True, False, kind), ("stop", False, False, kind),
                ("length", False, True, kind)} <= seen, kind


def step_transient_bytes(processor: OutputProcessor, reqs: list[Request], token: int, pack: bool) -> int:
    """Bytes a step's output work allocates and frees again (its peak above what it keeps): the copies it
    makes of the output so far show here, whatever they cost in time."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    feed(processor, reqs, token)
    outs = processor.make_outputs(reqs)
    if pack:
        outs = [pack_output(out, first=False) for out in outs]
    del outs
    current, peak = tracemalloc.get_traced_memory()
    return peak - max(before, current)


def long_output_transients(packed: bool, length: int = 4000) -> list[int]:
    """Per step, the transient bytes of one streamed sequence with stop strings and logprobs, `length`
    tokens long (as engine_core does: the snapshot mode's outputs packed)."""
    processor = OutputProcessor(TOKENIZER, packed=packed)
    reqs = make_group(processor, "long", SamplingParams(max_tokens=length, stop=["</answer>", "bb"], logprobs=1))
    tokens = [*b"a b ", 0xC3, 0xA9]
    gc.disable()
    tracemalloc.start()
    try:
        return [step_transient_bytes(processor, reqs, tokens[i % len(tokens)], not packed) for i in range(length)]
    finally:
        tracemalloc.stop()
        gc.enable()


def test_a_packed_step_does_no_work_proportional_to_the_output():
    """4000 tokens: the packed mode's steps allocate (and drop) under 2 KB each, at the end (the last,
    finishing step included) as at the start; the same measure sees the snapshot mode's copies of the
    output grow with it (8 bytes a token id and 8 a logprob entry: 64 KB a step at the end)."""
    packed = long_output_transients(packed=True)
    assert max(packed[100:]) < 2048
    snapshot = long_output_transients(packed=False)
    assert max(snapshot[100:1000]) < 20_000 and min(snapshot[-100:]) > 60_000


def test_a_held_output_does_not_change_after_later_steps():
    """The default mode (LLM.generate, LLMEngine.step(), the thread-mode AsyncEngine): an output held by its
    consumer keeps its text, ids and logprobs while the sequence goes on, a stop string's hold-back too."""
    processor = OutputProcessor(TOKENIZER)
    reqs = make_group(processor, "held", SamplingParams(max_tokens=40, stop=["bcb"], logprobs=1), prompt=list(b"hi "))
    held = []
    for token in b"ab cab cab cab cbcb":
        feed(processor, reqs, token)
        for out in processor.make_outputs(reqs):
            held.append((out, copy.deepcopy(out)))
    assert held[-1][0].finished and held[-1][0].outputs[0].text == "ab cab cab cab c"
    for out, at_the_time in held:
        assert out == at_the_time
    assert len({id(out.outputs[0].token_ids) for out, _ in held}) == len(held)
    assert held[1][0].outputs[0].text == "a"        # "ab" held back a step: it may begin "bcb"
    assert held[-1][0].outputs[0].stop_reason == "bcb" and held[-1][1].outputs[0].finish_reason == "stop"
