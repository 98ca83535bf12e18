"""The offline API: prompt forms, per-prompt params, stop conditions, n > 1, seeds, logprobs, errors."""
import pytest

from engine import LLM, Logprob, SamplingParams
from engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def llm(qwen3_checkpoint):
    return LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=256)


def greedy(llm, prompt, **kw):
    params = SamplingParams(temperature=0, ignore_eos=True, **{"max_tokens": 12, **kw})
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def test_prompt_forms_and_order(llm):
    tok = llm.get_tokenizer()
    texts = ["Hello there", "abc", "The quick brown fox"]
    by_text = llm.generate(texts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    by_ids = llm.generate([tok.encode(t) for t in texts], SamplingParams(temperature=0, max_tokens=6,
                                                                          ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in by_text] == [o.outputs[0].token_ids for o in by_ids]
    assert [o.prompt for o in by_text] == texts
    single = llm.generate(texts[1], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    assert single[0].outputs[0].token_ids == by_text[1].outputs[0].token_ids
    one_ids = llm.generate(tok.encode(texts[2]), SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                           use_tqdm=False)
    assert one_ids[0].outputs[0].token_ids == by_text[2].outputs[0].token_ids
    for o in by_text:
        c = o.outputs[0]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True) and c.finish_reason == "length"


def test_vllm_prompt_dicts_equal_plain_prompts(llm):
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    texts = ["Hello there", "abc"]
    plain = llm.generate(texts, params, use_tqdm=False)
    dicts = llm.generate([{"prompt": texts[0]}, {"prompt_token_ids": tok.encode(texts[1])}], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in dicts] == [o.outputs[0].token_ids for o in plain]
    assert dicts[0].prompt == texts[0] and dicts[1].prompt_token_ids == tok.encode(texts[1])
    single = llm.generate({"prompt_token_ids": tok.encode(texts[0])}, params, use_tqdm=False)
    assert single[0].outputs[0].token_ids == plain[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="'prompt' .* or 'prompt_token_ids'"):
        llm.generate({"prompt": "a", "multi_modal_data": {}}, params, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_per_prompt_params(llm):
    outs = llm.generate(["a", "b"], [SamplingParams(max_tokens=3), SamplingParams(max_tokens=5)], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5]
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False)


def test_stop_token_ids_and_stop_strings(llm):
    base = greedy(llm, "xyz", max_tokens=12)
    stop_tok = base.token_ids[4]
    first = base.token_ids.index(stop_tok)
    out = greedy(llm, "xyz", stop_token_ids=[stop_tok])
    assert out.token_ids == base.token_ids[:first + 1] and out.finish_reason == "stop"
    assert out.stop_reason == stop_tok
    tok = llm.get_tokenizer()
    # vLLM's: the stop token's text is left out unless include_stop_str_in_output (decoded at the end,
    # or step by step where a stop string is looked for too)
    for extra in ({}, {"stop": ["\x00never"]}):
        out = greedy(llm, "xyz", stop_token_ids=[stop_tok], **extra)
        assert out.text == tok.decode(base.token_ids[:first])
        kept = greedy(llm, "xyz", stop_token_ids=[stop_tok], include_stop_str_in_output=True, **extra)
        assert kept.text == tok.decode(base.token_ids[:first + 1])
    stop_str = base.text[3:5]
    out = greedy(llm, "xyz", stop=[stop_str])
    assert out.finish_reason == "stop" and out.stop_reason == stop_str
    assert out.text == base.text[:base.text.index(stop_str)]
    kept = greedy(llm, "xyz", stop=[stop_str], include_stop_str_in_output=True)
    assert kept.text == base.text[:base.text.index(stop_str) + len(stop_str)]


def test_stop_strings_wait_for_min_tokens(llm):
    """vLLM's: a stop string is looked for only in text that comes after the first min_tokens tokens."""
    base = greedy(llm, "abc", max_tokens=12)       # "))PPPP...": ")" twice, then not again
    stop_str = base.text[0]
    assert greedy(llm, "abc", stop=[stop_str]).text == ""
    late = greedy(llm, "abc", stop=[stop_str], min_tokens=2)
    assert late.text == base.text and late.finish_reason == "length"
    detok = IncrementalDetokenizer(llm.get_tokenizer(), llm.get_tokenizer().encode("abc"))
    assert detok.append(base.token_ids[:2]) == stop_str * 2 and stop_str not in detok.append(base.token_ids[2:])


def test_eos_and_min_tokens(llm):
    base = greedy(llm, "hello", max_tokens=8)
    eos = base.token_ids[2]
    llm.engine.eos_token_ids = (eos,)
    try:
        params = dict(temperature=0, max_tokens=8)
        out = llm.generate("hello", SamplingParams(**params), use_tqdm=False)[0].outputs[0]
        assert out.finish_reason == "stop" and out.token_ids[-1] == eos
        assert len(out.token_ids) == base.token_ids.index(eos) + 1
        ignored = llm.generate("hello", SamplingParams(ignore_eos=True, **params), use_tqdm=False)[0].outputs[0]
        assert ignored.token_ids == base.token_ids
        late = llm.generate("hello", SamplingParams(min_tokens=6, **params), use_tqdm=False)[0].outputs[0]
        assert eos not in late.token_ids[:6]
    finally:
        llm.engine.eos_token_ids = ()


def test_seed_reproducible_in_any_batch(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=10, ignore_eos=True)
    alone = llm.generate("seeded", params, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate(["other", "seeded", "more text here"],
                         [SamplingParams(temperature=1.0, max_tokens=10), params,
                          SamplingParams(temperature=0.7, max_tokens=4)], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == alone
    other = llm.generate("seeded", SamplingParams(temperature=1.0, seed=99, max_tokens=10, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0].token_ids
    assert other != alone


def test_n_and_logprobs(llm):
    out = llm.generate("fan out", SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, logprobs=2),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    for c in out.outputs:
        assert len(c.logprobs) == len(c.token_ids) == 6
        for token, lp in zip(c.token_ids, c.logprobs):
            assert list(lp)[0] == token and 2 <= len(lp) <= 3 and all(v.logprob <= 0 for v in lp.values())
            assert all(isinstance(v, Logprob) for v in lp.values())
        # vLLM's cumulative_logprob: the sampled tokens' logprobs summed; None without logprobs
        assert c.cumulative_logprob == pytest.approx(sum(lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)))
    assert greedy(llm, "fan out", max_tokens=2).cumulative_logprob is None


@pytest.mark.parametrize("prompt, match", [("", "prompt"), ([], "prompt"), ([10**7], "token ids"),
                                           (list(range(3, 300)), "max_model_len")])
def test_bad_prompts_are_rejected(llm, prompt, match):
    with pytest.raises(ValueError, match=match):
        llm.generate([prompt] if prompt != [] else [[]], SamplingParams(max_tokens=4), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_an_out_of_vocabulary_logit_bias_is_refused_before_queueing(llm):
    """vLLM's message, raised by add_request: the batch's other prompts are not queued half-way and the
    engine serves the next call (the id used to fail inside the step, leaving the requests stuck)."""
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(ValueError, match=rf"token_id\(s\) \[{vocab}\] in logit_bias contain out-of-vocab token "
                                         rf"ids. Vocabulary size: {vocab}"):
        llm.generate(["a", "b"], [SamplingParams(max_tokens=2), SamplingParams(logit_bias={vocab: 1.0})],
                     use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert len(greedy(llm, "a", max_tokens=3).token_ids) == 3


def test_an_id_that_a_live_sequence_goes_by_is_refused(llm):
    """n > 1 sequences are named "<id>#<i>": a request of that name (or one whose sequences would take a
    live request's name) is refused, instead of sharing that sequence's blocks and outputs."""
    engine, seeded = llm.engine, SamplingParams(temperature=1.0, seed=3, max_tokens=3, n=2)
    engine.add_request("x", "first", seeded)
    engine.add_request("y#1", "second", SamplingParams(max_tokens=3))
    for request_id, params in (("x#0", SamplingParams(max_tokens=3)), ("x#1", seeded), ("y", seeded), ("x", seeded)):
        with pytest.raises(ValueError, match=f"request id '{request_id}' is already in use"):
            engine.add_request(request_id, "clash", params)
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({out.request_id: out for out in engine.step() if out.finished})
    assert sorted(finished) == ["x", "y#1"] and len(finished["x"].outputs) == 2


def test_completion_finished_is_a_method_false_until_the_last_step(llm):
    """vLLM's `CompletionOutput.finished()` is a method (a property here made `comp.finished` truthy in
    every step, a bound method is too); RequestOutput.finished stays a bool."""
    engine = llm.engine
    engine.add_request("fin", "finished?", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    steps = []
    while engine.has_unfinished_requests():
        steps += engine.step()
    assert len(steps) == 3
    assert [out.outputs[0].finished() for out in steps] == [False, False, True]
    assert [out.finished for out in steps] == [False, False, True]
    assert all(isinstance(out.finished, bool) and isinstance(out.outputs[0].finished(), bool) for out in steps)

def test_max_tokens_past_max_model_len_stops_there_with_length(llm):
    """vLLM's offline engine refuses only a prompt that leaves no room; a max_tokens past max_model_len is
    accepted and the request stops at max_model_len with finish_reason "length" (n > 1 sequences, prompt
    logprobs and a min_tokens past the room too), the same greedy tokens as max_tokens = the room."""
    prompt = list(range(3, 200))
    room = llm.engine.max_model_len - len(prompt)
    exact = greedy(llm, [prompt], max_tokens=room)
    past = greedy(llm, [prompt], max_tokens=10_000)
    assert (len(past.token_ids), past.finish_reason) == (room, "length")
    assert past.token_ids == exact.token_ids and exact.finish_reason == "length"
    params = SamplingParams(temperature=1.0, seed=5, ignore_eos=True, max_tokens=10_000, min_tokens=5_000, n=2,
                            prompt_logprobs=1)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert [(len(c.token_ids), c.finish_reason) for c in out.outputs] == [(room, "length")] * 2
    assert len(out.prompt_logprobs) == len(prompt)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_eos_ids_include_generation_config(tmp_path):
    import json
    import shutil

    from tests.engine.checkpoints import write_checkpoint
    write_checkpoint(tmp_path, "qwen2")
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [258, 77]}, f)
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", max_model_len=64)
    assert {77, 258, 256} <= set(llm.engine.eos_token_ids)
    shutil.rmtree(tmp_path)


def test_startup_heap_is_frozen_out_of_the_gc(qwen3_checkpoint):
    """The engine freezes what start-up built, so full GC passes while serving skip the model's objects."""
    import gc
    gc.unfreeze()
    LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=64)
    assert gc.get_freeze_count() > 1000
