"""vLLM's structured outputs (choice) through the offline API (tiny random checkpoint, byte tokenizer, CPU):
every answer is exactly one of the choices and ends on EOS, greedy, sampled and n > 1; a bias steers which
one; a choice that prefixes another may end or go on; max_tokens cuts a choice short; requests without a
choice beside them do not change."""
import pytest

from engine import LLM, SamplingParams
from engine.structured_outputs import StructuredOutputsParams

PROMPTS = ["Hello there", "The quick brown fox", "1, 2, 3,", "zzz top"]
CHOICES = ["yes", "no", "maybe so"]


@pytest.fixture(scope="module")
def llm(qwen3_checkpoint):
    return LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=64, max_num_seqs=8)


def choice_params(choices=CHOICES, **kw) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 20, **kw}, structured_outputs=StructuredOutputsParams(choice=choices))


def test_every_answer_is_one_choice_ending_on_eos(llm):
    params = [choice_params(temperature=0), choice_params(temperature=1.0, seed=1),
              choice_params(temperature=1.0, seed=2, n=3), choice_params(temperature=0.7, top_k=5, seed=3)]
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    answers = [seq for out in outs for seq in out.outputs]
    assert len(answers) == 6
    for seq in answers:
        assert seq.text in CHOICES and seq.finish_reason == "stop", seq
        assert seq.token_ids[-1] in llm.engine.eos_token_ids


def test_a_bias_steers_the_choice(llm):
    for letter, choice in (("y", "yes"), ("n", "no"), ("m", "maybe so")):
        out = llm.generate(PROMPTS[:2], choice_params(temperature=1.0, seed=4, logit_bias={ord(letter): 40.0}),
                           use_tqdm=False)
        assert [o.outputs[0].text for o in out] == [choice] * 2


def test_a_choice_that_prefixes_another_may_end_or_go_on(llm):
    eos = llm.engine.eos_token_ids[0]
    ends = llm.generate(PROMPTS[0], choice_params(["ab", "abc"], temperature=0, logit_bias={eos: 40.0}),
                        use_tqdm=False)
    goes_on = llm.generate(PROMPTS[0], choice_params(["ab", "abc"], temperature=0, logit_bias={ord("c"): 40.0}),
                           use_tqdm=False)
    assert ends[0].outputs[0].text == "ab" and goes_on[0].outputs[0].text == "abc"


def test_max_tokens_cuts_a_choice_short(llm):
    out = llm.generate(PROMPTS[0], choice_params(["abcdef"], temperature=0, max_tokens=3), use_tqdm=False)
    assert out[0].outputs[0].text == "abc" and out[0].outputs[0].finish_reason == "length"


def test_requests_without_a_choice_are_unchanged_beside_them(llm):
    plain = SamplingParams(temperature=1.0, seed=9, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[1:3], plain, use_tqdm=False)
    mixed = llm.generate(PROMPTS[:3], [choice_params(temperature=0), plain, plain], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[1:]] == [o.outputs[0].token_ids for o in alone]
    assert mixed[0].outputs[0].text in CHOICES


def test_chat_answers_with_a_choice(llm):
    out = llm.chat([{"role": "user", "content": "Is it raining?"}], choice_params(temperature=0), use_tqdm=False)
    assert out[0].outputs[0].text in CHOICES


def test_min_tokens_never_hold_back_a_choices_end_and_allowed_ids_narrow_it(llm):
    out = llm.generate(PROMPTS, [choice_params(temperature=0, min_tokens=6),
                                 choice_params(temperature=1.0, seed=1, min_tokens=6),
                                 choice_params(temperature=0, allowed_token_ids=[ord(c) for c in "mabe so"]),
                                 choice_params(temperature=0, allowed_token_ids=[7])], use_tqdm=False)
    texts = [o.outputs[0].text for o in out]
    assert texts[0] in CHOICES and texts[1] in CHOICES and texts[2] == "maybe so" and texts[3] in CHOICES
