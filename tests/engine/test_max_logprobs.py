"""vLLM's max_logprobs: the most logprobs / prompt_logprobs a request may ask for (20 by default, -1 no cap),
refused with vLLM's messages offline, and its --max-logprobs flag."""
import pytest

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.serve import build_parser, config_from_args

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def llms(qwen3_checkpoint):
    return {cap: LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=64, max_logprobs=cap)
            for cap in (20, -1)}


def test_more_than_the_cap_is_refused_with_vllms_messages(llms):
    for params, message in ((SamplingParams(logprobs=21), "Requested sample logprobs of 21, which is greater than "
                                                          "max allowed: 20"),
                            (SamplingParams(prompt_logprobs=25), "Requested prompt logprobs of 25, which is greater "
                                                                 "than max allowed: 20")):
        with pytest.raises(ValueError, match=message):
            llms[20].generate(PROMPT, params, use_tqdm=False)
    out = llms[20].generate(PROMPT, SamplingParams(max_tokens=2, logprobs=20, prompt_logprobs=20), use_tqdm=False)
    assert all(len(step) >= 20 for step in out[0].outputs[0].logprobs)


def test_no_cap_gives_as_many_as_asked(llms):
    out = llms[-1].generate(PROMPT, SamplingParams(max_tokens=2, logprobs=40, prompt_logprobs=30), use_tqdm=False)
    assert all(len(step) >= 40 for step in out[0].outputs[0].logprobs)
    assert all(len(entry) >= 30 for entry in out[0].prompt_logprobs[1:])


def test_minus_one_is_the_whole_vocabulary(llms):
    """vLLM's -1 for logprobs / prompt_logprobs: every token of the vocabulary, so above a cap it is refused
    with the vocabulary's size in the message."""
    vocab = llms[-1].engine.model_config.vocab_size
    out = llms[-1].generate(PROMPT, SamplingParams(max_tokens=2, logprobs=-1, prompt_logprobs=-1), use_tqdm=False)
    assert all(len(step) == vocab for step in out[0].outputs[0].logprobs)
    assert all(len(entry) == vocab for entry in out[0].prompt_logprobs[1:])
    with pytest.raises(ValueError, match=f"Requested sample logprobs of {vocab}, which is greater than max allowed: 20"):
        llms[20].generate(PROMPT, SamplingParams(logprobs=-1), use_tqdm=False)


def test_config_and_flag():
    with pytest.raises(ValueError, match="max_logprobs must be >= 0, or -1 for no cap"):
        EngineConfig(model="m", max_logprobs=-2)
    assert config_from_args(build_parser().parse_args(["m", "--max-logprobs", "50"])).max_logprobs == 50
    assert config_from_args(build_parser().parse_args(["m"])).max_logprobs == 20
