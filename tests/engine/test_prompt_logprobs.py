"""Prompt logprobs (SamplingParams.prompt_logprobs) against transformers' log_softmax of the prompt's
logits in float64 (tiny random checkpoints, float32, CPU): whole prompts and prompts chunked over steps,
prompts whose prefix is cached, n > 1, k = 0 and k > 0, batches mixing requests with and without them,
preemption, sync and async scheduling; and the outputs crossing the process boundary."""
import dataclasses
import random

import pytest
import torch

from engine import LLM, Logprob, SamplingParams, prompt_logprobs
from engine.output_wire import OutputAssembler, pack_output
from engine.output_processor import OutputProcessor
from engine.outputs import CompletionOutput, RequestOutput
from engine.request import Request
from models.tokenizer import byte_tokenizer
from scheduler.scheduler import Scheduler
from tests.engine.test_graph_padding import EagerGraphs

ATOL = 2e-4
TOKENIZER = byte_tokenizer()         # the tiny checkpoints' (tests/engine/checkpoints.py)


def prompts(vocab: int, lens, seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    return [list(prefix or []) + [rng.randrange(3, vocab) for _ in range(n)] for n in lens]


def reference(hf_model, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, V] float64: row p is the log-distribution of prompt token p + 1."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0, :-1].double()
    return torch.log_softmax(logits, dim=-1)


def check_rank(row: torch.Tensor, token: int, rank: int) -> None:
    """`rank` is `token`'s in the float64 row `[V]`: the tokens with a logprob at least as large (vLLM's
    count), to ATOL."""
    value = row[token].item()
    assert int((row > value + ATOL).sum()) + 1 <= rank <= int((row >= value - ATOL).sum()), (token, rank)


def check(out, hf_model, k: int) -> None:
    """`out.prompt_logprobs` equal transformers' for `out.prompt_token_ids` with top `k`: vLLM's Logprobs,
    the prompt token first with its rank in the vocabulary, then the top k ranked 1..k, each with its text."""
    prompt = out.prompt_token_ids
    ref = reference(hf_model, prompt)
    assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
    for p, entry in enumerate(out.prompt_logprobs[1:]):
        token, row = prompt[p + 1], ref[p]
        assert list(entry)[0] == token                       # the prompt token first, then the top k
        for t, lp in entry.items():
            assert isinstance(lp, Logprob) and lp.decoded_token == TOKENIZER.decode([t])
            assert lp.logprob == pytest.approx(row[t].item(), abs=ATOL)
            check_rank(row, t, lp.rank)
        in_top = len(entry) == k
        assert len(entry) == k + 1 or (in_top and k > 0)
        top = list(entry) if in_top else list(entry)[1:]
        assert sorted(entry[t].rank for t in top) == list(range(1, k + 1)), "the top k are not ranked 1..k"
        kth = row.topk(k).values[-1].item() if k else float("inf")
        assert all(row[t].item() >= kth - ATOL for t in top), "not the top k"
        rest = [entry[t] for t in list(entry)[1:]]
        assert [lp.rank for lp in rest] == sorted(lp.rank for lp in rest), "top k not most likely first"
        assert [lp.logprob for lp in rest] == sorted((lp.logprob for lp in rest), reverse=True)


def engine(path: str, **kw) -> LLM:
    return LLM(path, device="cpu", dtype="float32", **kw)


def greedy(k: int | None, max_tokens: int = 4, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=k, **kw)


@pytest.mark.parametrize("k", [0, 3])
def test_prompt_logprobs_match_transformers(checkpoint, k, monkeypatch):
    """One step for the whole batch, its 53 prompt positions through the LM head in chunks of 8 rows."""
    path, hf_model = checkpoint
    monkeypatch.setattr(prompt_logprobs, "MAX_ROWS_PER_CHUNK", 8)
    batch = prompts(hf_model.config.vocab_size, (5, 17, 33, 2, 1))
    outs = engine(path).generate(batch, greedy(k), use_tqdm=False)
    for out in outs[:-1]:
        check(out, hf_model, k)
    assert outs[-1].prompt_logprobs == [None]
    if k == 0:
        assert all(len(entry) == 1 for out in outs for entry in out.prompt_logprobs[1:])


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_chunked_prefill_mixed_batch_keeps_other_outputs(qwen3_checkpoint, async_scheduling):
    """Prompts longer than the step budget (16 tokens) beside requests without prompt logprobs: theirs
    are complete and correct, the others' outputs equal a run where nobody asked for them."""
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, (45, 70, 9, 30), seed=2)
    kw = dict(max_num_batched_tokens=16, max_num_seqs=4, enable_prefix_caching=False,
              async_scheduling=async_scheduling)
    plain = greedy(None, max_tokens=8, logprobs=1)
    asked = [greedy(2, max_tokens=8, logprobs=1), plain, greedy(5, max_tokens=8, logprobs=1), plain]
    outs = engine(path, **kw).generate(batch, asked, use_tqdm=False)
    alone = engine(path, **kw).generate(batch, plain, use_tqdm=False)
    check(outs[0], hf_model, 2)
    check(outs[2], hf_model, 5)
    assert outs[1].prompt_logprobs is None and outs[3].prompt_logprobs is None
    for got, want in zip(outs, alone):
        assert [(c.token_ids, c.logprobs) for c in got.outputs] == [(c.token_ids, c.logprobs) for c in want.outputs]


def test_steps_padded_as_graph_replays_give_the_same(qwen3_checkpoint):
    """Steps padded as the CUDA graphs pad them (an eager stand-in on the CPU: tokens after the last
    request's, requests of no tokens, decode batches to 1, 2, 4): the hidden rows read are the
    requests' own, and the prompt logprobs are transformers'."""
    path, hf_model = qwen3_checkpoint
    llm = engine(path, max_num_batched_tokens=12, max_num_seqs=4)
    runner = llm.engine.runner
    runner.graphs = EagerGraphs(runner, [1, 2, 4], prefill_sizes=[16])
    batch = prompts(hf_model.config.vocab_size, (3, 13, 6), seed=9)
    outs = llm.generate(batch, [greedy(2), greedy(None), greedy(1)], use_tqdm=False)
    check(outs[0], hf_model, 2)
    check(outs[2], hf_model, 1)
    padded = [c for c in runner.graphs.seen if c.max_query_len > 1 and c.num_tokens > c.query_start_loc[-1]]
    assert padded, "no step with prompt tokens was padded"


def test_cached_prefix_is_computed_for_prompt_logprobs(qwen3_checkpoint):
    """A prompt whose first 40 tokens an earlier request cached still gets all its prompt logprobs (the
    cache is not read for it), while a later request without them still reads the cache."""
    path, hf_model = qwen3_checkpoint
    vocab = hf_model.config.vocab_size
    prefix = prompts(vocab, (40,), seed=5)[0]
    first, second, third = prompts(vocab, (3, 20, 7), seed=6, prefix=prefix)
    llm = engine(path, block_size=16, enable_prefix_caching=True)
    llm.generate([first], greedy(None), use_tqdm=False)
    hits = llm.engine.get_stats().prefix_cache_hits
    out = llm.generate([second], greedy(4), use_tqdm=False)[0]
    assert out.num_cached_tokens == 0 and llm.engine.get_stats().prefix_cache_hits == hits
    check(out, hf_model, 4)
    later = llm.generate([third], greedy(None), use_tqdm=False)[0]
    assert later.num_cached_tokens >= 32 and later.prompt_logprobs is None


def test_n_computes_them_once(qwen3_checkpoint):
    """n = 3: one list for the request, computed by its first sequence only (the LM head sees the
    prompt's positions once, besides one sampling row per sequence and token)."""
    path, hf_model = qwen3_checkpoint
    prompt = prompts(hf_model.config.vocab_size, (23,), seed=3)[0]
    llm = engine(path)
    rows, model = [], llm.engine.runner.model
    original = model.compute_logits
    model.compute_logits = lambda hidden: rows.append(hidden.shape[0]) or original(hidden)
    params = SamplingParams(n=3, temperature=1.0, seed=4, max_tokens=5, ignore_eos=True, prompt_logprobs=1)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    check(out, hf_model, 1)
    assert len(out.outputs) == 3 and all(len(c.token_ids) == 5 for c in out.outputs)
    assert sum(rows) == (len(prompt) - 1) + 3 * 5


def test_preemption_keeps_them_whole(qwen3_checkpoint, monkeypatch):
    """A KV pool too small for the batch (12 blocks of 8) and a 16-token step budget: requests are
    preempted, some mid-prompt, and recomputed (the prefix cache serves the part whose logprobs are
    computed); prompt logprobs stay complete and correct and the generated tokens equal the
    unpreempted run's."""
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, (30, 25, 40, 20), seed=3)
    kw = dict(block_size=8, max_model_len=96, max_num_batched_tokens=16, enable_prefix_caching=True)
    params = greedy(2, max_tokens=32)
    llm = engine(path, num_kv_blocks=12, **kw)
    mid_prompt, preempt = [], Scheduler._preempt
    monkeypatch.setattr(Scheduler, "_preempt", lambda self, request: (
        mid_prompt.append(not request.prompt_logprobs.all_launched), preempt(self, request))[1])
    outs = llm.generate(batch, params, use_tqdm=False)
    roomy = engine(path, **kw).generate(batch, params, use_tqdm=False)
    assert any(mid_prompt) and not all(mid_prompt)
    for out, want in zip(outs, roomy):
        check(out, hf_model, 2)
        assert out.outputs[0].token_ids == want.outputs[0].token_ids
    assert llm.engine.block_manager.num_free_blocks == 12
    assert not llm.engine._prompt_logprob_requests


def test_streamed_outputs_carry_them_from_the_first(qwen3_checkpoint):
    """Engine outputs per step (CUMULATIVE, the default kind): every output has the complete list, and it crosses the
    process boundary once (pack_output's first output) to be rebuilt equal on the other side."""
    path, hf_model = qwen3_checkpoint
    prompt = prompts(hf_model.config.vocab_size, (37,), seed=8)[0]
    llm = engine(path, max_num_batched_tokens=16)
    llm.engine.add_request("r", prompt, greedy(2, max_tokens=6))
    assembler, seen = OutputAssembler(), []
    while llm.engine.has_unfinished_requests():
        for out in llm.engine.step():
            packed = pack_output(out, first=not seen)
            assert (packed[1] is not None) == (not seen)
            rebuilt = assembler.unpack(packed)
            seen.append(out)
            assert rebuilt.prompt_logprobs == out.prompt_logprobs
    assert len(seen) == 6
    for out in seen:
        check(out, hf_model, 2)


def test_wire_carries_no_prompt_logprobs_after_the_first_output():
    prompt_lps = [None, {2: Logprob(-0.5, 1, "b"), 7: Logprob(-1.5, 2, None)}]
    outs = [RequestOutput("r", "p", [1, 2], [CompletionOutput(0, "a", [5], token_ids_delta=[5], text_delta="a")],
                          False, prompt_logprobs=prompt_lps),
            RequestOutput("r", "p", [1, 2], [CompletionOutput(0, "ab", [5, 6], "length", token_ids_delta=[6],
                                                              text_delta="b")],
                          True, prompt_logprobs=prompt_lps)]
    assembler = OutputAssembler()
    first = assembler.unpack(pack_output(outs[0], first=True))
    later_packed = pack_output(outs[1], first=False)
    assert later_packed[1] is None                          # the prompt and its logprobs went once
    later = assembler.unpack(later_packed)
    assert first.prompt_logprobs == later.prompt_logprobs == prompt_lps
    assert list(later.prompt_logprobs[1]) == [2, 7] and later.outputs[0].text == "ab"


@pytest.mark.parametrize("value", [-2, -5])
def test_negative_prompt_logprobs_name_the_field(value):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=value)


def test_a_group_waits_for_its_first_sequences_prompt_logprobs():
    """n = 2 (CUMULATIVE): while the first sequence's prompt logprobs are incomplete (it was preempted
    mid-prompt, say) the second sequence's tokens make no output; the first output then carries the
    complete list and everything the second sequence generated meanwhile."""
    params = SamplingParams(n=2, max_tokens=8, prompt_logprobs=1)
    first, second = (Request(f"g#{i}", [70, 71, 72], p) for i, p in
                     enumerate([params, dataclasses.replace(params, prompt_logprobs=None)]))
    processor = OutputProcessor(byte_tokenizer())
    processor.add_group("g", None, [70, 71, 72], [first, second])
    for token in (97, 98):
        second.append_output_token(token)
        assert processor.process_token(second, None, 100) is None
        assert processor.make_outputs([second]) == []
    first.prompt_logprobs.entries += [([71, 65], [-1.0, -0.5], 3), ([72, 72], [-2.0, -2.0], 1)]
    first.append_output_token(99)
    processor.process_token(first, None, 100)
    [out] = processor.make_outputs([first])
    assert out.prompt_logprobs == [None, {71: Logprob(-1.0, 3, "G"), 65: Logprob(-0.5, 1, "A")},
                                   {72: Logprob(-2.0, 1, "H")}]
    assert out.outputs[1].token_ids_delta == [97, 98] and out.outputs[1].text_delta == "ab"
