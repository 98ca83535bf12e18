"""vLLM's allowed_token_ids and truncate_prompt_tokens through the offline API (tiny random checkpoint, CPU):
every generated token is an allowed one (greedy and seeded temperature 1, beside requests that do not ask,
whose outputs do not change); a truncated prompt generates what its last k tokens generate, and its outputs
carry those ids; both are validated with errors that name the field (vLLM's rules and messages)."""
import pytest

from engine import LLM, SamplingParams

PROMPTS = ["Hello there", "The quick brown fox", "1, 2, 3,", "zzz top", "abc def"]
ALLOWED = [7, 33, 101, 250]
MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def llm(qwen3_checkpoint):
    return LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=MAX_MODEL_LEN, max_num_seqs=8)


def mixed_params(allowed: list[int] | None) -> list[SamplingParams]:
    """Prompts 0 and 2 (greedy; seeded temperature 1) use `allowed`; the others never do."""
    base = dict(max_tokens=8, ignore_eos=True)
    return [SamplingParams(temperature=0, allowed_token_ids=allowed, **base),
            SamplingParams(temperature=0, **base),
            SamplingParams(temperature=1.0, seed=3, allowed_token_ids=allowed, **base),
            SamplingParams(temperature=1.0, seed=4, **base),
            SamplingParams(temperature=0.8, seed=5, top_k=20, **base)]


def token_ids(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def test_allowed_rows_generate_only_allowed_tokens_and_the_others_do_not_change(llm):
    masked = token_ids(llm.generate(PROMPTS, mixed_params(ALLOWED), use_tqdm=False))
    plain = token_ids(llm.generate(PROMPTS, mixed_params(None), use_tqdm=False))
    for i in (0, 2):
        assert len(masked[i]) == 8 and set(masked[i]) <= set(ALLOWED), masked[i]
        assert not set(plain[i]) <= set(ALLOWED)            # the model would not pick them by itself
    assert [masked[i] for i in (1, 3, 4)] == [plain[i] for i in (1, 3, 4)]


def test_a_single_allowed_token_is_the_whole_answer(llm):
    out = llm.generate(PROMPTS[:2], SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True, logprobs=2,
                                                   allowed_token_ids=[42]), use_tqdm=False)
    assert token_ids(out) == [[42] * 5] * 2
    # logprobs are raw (vLLM's raw_logprobs, before the mask): 42's logprob given the tokens before it, as
    # the prompt logprobs of the prompt followed by the five 42s compute it
    for o in out:
        n = len(o.prompt_token_ids)
        ref = llm.generate([{"prompt_token_ids": o.prompt_token_ids + [42] * 5}],
                           SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        want = [entry[42].logprob for entry in ref.prompt_logprobs[n:]]
        assert [step[42].logprob for step in o.outputs[0].logprobs] == pytest.approx(want, abs=1e-4)
        assert max(want) < -0.1                         # not the masked distribution's 0.0


def test_truncated_prompt_generates_as_its_last_tokens(llm):
    ids = llm.get_tokenizer().encode("The quick brown fox jumps over the lazy dog")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    truncated = llm.generate([ids, {"prompt_token_ids": ids}], SamplingParams(
        temperature=0, max_tokens=6, ignore_eos=True, truncate_prompt_tokens=5), use_tqdm=False)
    direct = llm.generate([ids[-5:]], params, use_tqdm=False)
    assert token_ids(truncated) == token_ids(direct) * 2
    assert [o.prompt_token_ids for o in truncated] == [ids[-5:]] * 2
    whole = llm.generate([ids], params, use_tqdm=False)
    assert whole[0].prompt_token_ids == ids and token_ids(whole) != token_ids(direct)


def test_truncated_text_prompt_keeps_its_text(llm):
    text = "The quick brown fox jumps over the lazy dog"
    out = llm.generate(text, SamplingParams(temperature=0, max_tokens=3, truncate_prompt_tokens=4), use_tqdm=False)
    assert out[0].prompt == text
    assert out[0].prompt_token_ids == llm.get_tokenizer().encode(text)[-4:]


def test_minus_one_truncates_to_max_model_len(llm):
    ids = list(range(10, 10 + MAX_MODEL_LEN - 8))
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True,
                                             truncate_prompt_tokens=-1), use_tqdm=False)
    assert out[0].prompt_token_ids == ids
    assert token_ids(out) == token_ids(llm.generate([ids], params, use_tqdm=False))
    too_long = list(range(10, 10 + MAX_MODEL_LEN + 5))
    with pytest.raises(ValueError, match="max_model_len"):       # all of max_model_len leaves no room
        llm.generate([too_long], SamplingParams(max_tokens=1, truncate_prompt_tokens=-1), use_tqdm=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(allowed_token_ids=[]), "allowed_token_ids must not be empty, got []"),
    (dict(allowed_token_ids=[3, -1]), "allowed_token_ids must be token ids (integers >= 0), got [3, -1]"),
    (dict(allowed_token_ids=[True]), "allowed_token_ids must be token ids"),
    (dict(truncate_prompt_tokens=0), "truncate_prompt_tokens must be an integer >= 1 or -1, got 0"),
    (dict(truncate_prompt_tokens=-2), "truncate_prompt_tokens must be an integer >= 1 or -1, got -2"),
])
def test_sampling_params_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert message in str(err.value)


def test_engine_checks_against_the_vocabulary_and_max_model_len(llm):
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(ValueError, match=rf"allowed_token_ids must be token ids in \[0, {vocab}\), got \[{vocab}\]"):
        llm.generate("hi", SamplingParams(allowed_token_ids=[1, vocab]), use_tqdm=False)
    with pytest.raises(ValueError) as err:
        llm.generate("hi", SamplingParams(truncate_prompt_tokens=MAX_MODEL_LEN + 1), use_tqdm=False)
    assert str(err.value) == (f"truncate_prompt_tokens value ({MAX_MODEL_LEN + 1}) is greater than max_model_len "
                              f"({MAX_MODEL_LEN}). Please, select a smaller truncation size.")
    assert not llm.engine.has_unfinished_requests()
