"""vLLM's bad_words through the offline API (tiny random checkpoint with the byte tokenizer, CPU): no output
holds a bad word; each output equals the one without bad words up to the token that would have ended
the word's first occurrence; requests without bad words do not change; the prompt never counts (as in
vLLM); an empty word is a ValueError naming the field."""
import pytest

from engine import LLM, SamplingParams

PROMPTS = ["Hello there", "The quick brown fox", "1, 2, 3,", "zzz top"]
LETTERS = [ord(c) for c in "abcd"]          # the byte tokenizer: one token per byte


@pytest.fixture(scope="module")
def llm(qwen3_checkpoint):
    return LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=64, max_num_seqs=8)


def texts(llm, prompts, params) -> list[str]:
    return [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]


def letter_params(seed: int | None, bad_words: list[str] | None = None) -> SamplingParams:
    """Greedy when seed is None, else seeded temperature 1; only the letters a-d, 24 of them."""
    return SamplingParams(temperature=0 if seed is None else 1.0, seed=seed, max_tokens=24, ignore_eos=True,
                          allowed_token_ids=LETTERS, bad_words=bad_words)


def test_outputs_avoid_their_bad_words_and_change_only_where_one_would_end(llm):
    seeds = [None, 1, 2, 3]
    plain = texts(llm, PROMPTS, [letter_params(s) for s in seeds])
    words = [text[1:3] for text in plain]                 # a two-letter word each plain output holds
    banned = texts(llm, PROMPTS, [letter_params(s, [w]) for s, w in zip(seeds, words)])
    for text, word, before in zip(banned, words, plain):
        assert len(text) == 24 and word not in text, (word, text)
        first = before.find(word)
        assert text[:first + 1] == before[:first + 1] and text[first + 1] != before[first + 1]


def test_requests_without_bad_words_are_unchanged_beside_them(llm):
    seeds = [None, 1, 2, 3]
    plain = texts(llm, PROMPTS, [letter_params(s) for s in seeds])
    mixed = texts(llm, PROMPTS, [letter_params(s, ["a", "b"] if i % 2 else None) for i, s in enumerate(seeds)])
    assert mixed[0::2] == plain[0::2]
    assert all(set(text) <= {"c", "d"} for text in mixed[1::2]), mixed


def test_every_sequence_of_n_avoids_the_word(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=0, max_tokens=30, ignore_eos=True,
                            allowed_token_ids=LETTERS[:2], bad_words=["ab", "ba"])
    outs = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs
    assert len(outs) == 3 and {o.text for o in outs} <= {"a" * 30, "b" * 30}


def test_the_prompt_never_starts_a_bad_word(llm):
    """The bias makes "b" the answer; were the prompt's last "a" counted, "b" would be banned at once."""
    out = texts(llm, ["xyz a"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, bad_words=["ab"],
                                                allowed_token_ids=LETTERS[:2], logit_bias={ord("b"): 100.0}))
    assert out == ["bbbb"]


def test_an_empty_word_is_an_error_naming_the_field(llm):
    with pytest.raises(ValueError, match="bad_words must be strings with a character other than whitespace"):
        llm.generate(PROMPTS[0], SamplingParams(bad_words=["ok", " "]), use_tqdm=False)
