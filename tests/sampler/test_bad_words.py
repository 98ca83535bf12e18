"""vLLM's bad_words: how words become token-id sequences (both spellings, vLLM's rule), which tokens a
request's output so far bans (against a brute-force definition on random cases), and the Sampler never
picking a banned token while the other rows of the batch are unchanged."""
import random

import pytest
import torch

from engine.bad_words import bad_words_token_ids, banned_token_ids
from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams

VOCAB = 64
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL = [False, True] if torch.cuda.is_available() else [False]     # the Triton sampling kernel: CUDA only here


class TableEncoder:
    """A tokenizer stand-in: each text it knows encodes to its listed ids."""

    TABLE = {"bad": [5], " bad": [6], "two words": [7, 8], " two words": [9, 8], "same": [12], " same": [12],
             "longer": [13], " longer": [32, 13], "huge": [500], " huge": [501]}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        return self.TABLE[text]


def test_each_word_is_banned_bare_and_after_a_space_when_that_is_a_token_of_its_own():
    assert bad_words_token_ids(["bad"], TableEncoder(), VOCAB) == ((5,), (6,))
    assert bad_words_token_ids(["two words"], TableEncoder(), VOCAB) == ((7, 8), (9, 8))
    assert bad_words_token_ids(["same"], TableEncoder(), VOCAB) == ((12,),)        # the space changes nothing
    assert bad_words_token_ids(["longer"], TableEncoder(), VOCAB) == ((13,),)      # the space is a token more
    assert bad_words_token_ids(["  bad", "bad"], TableEncoder(), VOCAB) == ((5,), (6,))   # lstripped, deduped
    assert bad_words_token_ids(None, TableEncoder(), VOCAB) == ()


def test_a_word_outside_the_models_vocabulary_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"bad_words must tokenize to token ids in \[0, 64\).*\[500, 501\]"):
        bad_words_token_ids(["bad", "huge"], TableEncoder(), VOCAB)


def brute_force_banned(sequences, output: list[int]) -> set[int]:
    """Token t is banned when the output followed by t would end with a whole bad sequence."""
    return {seq[-1] for seq in sequences
            if len(output) + 1 >= len(seq) and tuple((output + [seq[-1]])[-len(seq):]) == seq}


def test_banned_tokens_match_the_definition_on_random_outputs():
    rng = random.Random(0)
    for _ in range(2000):
        sequences = tuple(tuple(rng.randrange(4) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3)))
        output = [rng.randrange(4) for _ in range(rng.randint(0, 5))]
        assert set(banned_token_ids(sequences, output)) == brute_force_banned(sequences, output), (sequences, output)


def test_banned_tokens_on_named_cases():
    sequences = ((5,), (7, 8), (1, 2, 3))
    assert banned_token_ids(sequences, []) == [5]
    assert banned_token_ids(sequences, [7]) == [5, 8]
    assert banned_token_ids(sequences, [0, 1, 2]) == [5, 3]
    assert banned_token_ids(sequences, [1, 2, 3]) == [5]


def request_with(params: SamplingParams, bad: tuple = (), output: list[int] = ()) -> Request:
    req = Request("r", [1, 2, 3], params, eos_token_ids=(0,), bad_words_token_ids=bad)
    for token in output:
        req.append_output_token(token)
    return req


@pytest.mark.parametrize("use_kernel", KERNEL)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_never_picks_a_banned_token_and_other_rows_do_not_change(temperature, use_kernel):
    gen = torch.Generator().manual_seed(0)
    bad = ((40,), (7, 8), (1, 2, 3))
    params = SamplingParams(temperature=temperature, seed=3, bad_words=["stand-in"])
    for trial in range(20):
        logits = torch.randn(3, VOCAB, generator=gen)
        logits[:, [40, 8, 3]] = 30.0                 # the likeliest by far; row 0 bans 40 and 8, row 1 40 and 3
        logits = logits.to(DEVICE)
        requests = [request_with(params, bad, output=[9, 7]), request_with(params, bad, output=[1, 2]),
                    request_with(SamplingParams(temperature=temperature, seed=3), output=[1, 2])]
        meta = SamplingMetadata.from_requests(requests, VOCAB, DEVICE)
        assert not meta.reusable
        picked = Sampler(use_kernel=use_kernel)(logits, meta).sampled_token_ids.tolist()
        assert picked[:2] == [3, 8], (trial, picked)     # each row's one candidate left unbanned
        alone = SamplingMetadata.from_requests(requests[2:], VOCAB, DEVICE)
        assert picked[2] == Sampler(use_kernel=use_kernel)(logits[2:], alone).sampled_token_ids.item()


def test_bad_words_need_the_output_history_and_are_validated():
    assert SamplingParams(bad_words=["x"]).uses_output_history
    assert not SamplingParams(bad_words=None).uses_output_history
    assert SamplingParams(bad_words="word").bad_words == ["word"]
    assert not SamplingParams(bad_words=[]).uses_rare_features           # no words: nothing per step
    for value in (["ok", ""], ["   "], [3], 5):
        with pytest.raises(ValueError, match="bad_words must be strings with a character other than whitespace"):
            SamplingParams(bad_words=value)
