"""Generated tokens' logprobs as vLLM's Logprob objects, against transformers' log_softmax of the same
sequence's logits in float64 (tiny random checkpoints, float32, CPU): per generated token the sampled
token first with its rank in the vocabulary, then the top k ranked 1..k, most likely first, each with
its text (tokenizer.decode([id])); cumulative_logprob the sampled tokens' sum."""
import pytest

from engine import LLM, Logprob, SamplingParams
from engine.output_processor import TokenTexts, logprobs_dict
from tests.engine.test_prompt_logprobs import ATOL, TOKENIZER, check_rank, prompts, reference


def check_sampled(out, hf_model, k: int) -> None:
    """Each CompletionOutput's logprobs are transformers' for the prompt plus its generated tokens."""
    for comp in out.outputs:
        ref = reference(hf_model, out.prompt_token_ids + comp.token_ids)[len(out.prompt_token_ids) - 1:]
        assert len(comp.logprobs) == len(comp.token_ids)
        for token, entry, row in zip(comp.token_ids, comp.logprobs, ref):
            assert list(entry)[0] == token                   # the sampled token first
            for t, lp in entry.items():
                assert isinstance(lp, Logprob) and lp.decoded_token == TOKENIZER.decode([t])
                assert lp.logprob == pytest.approx(row[t].item(), abs=ATOL)
                check_rank(row, t, lp.rank)
            top = [t for t in entry if t != token or len(entry) == k]
            assert sorted(entry[t].rank for t in top) == list(range(1, k + 1))
            rest = [entry[t].logprob for t in list(entry)[1:]]
            assert rest == sorted(rest, reverse=True)
        assert comp.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(comp.token_ids,
                                                                                          comp.logprobs)))


@pytest.mark.parametrize("k", [0, 4])
def test_sampled_logprobs_and_ranks_match_transformers(checkpoint, k):
    """Random sampling (seeded, n = 2) so that sampled tokens are not always the most likely: their ranks
    are their places in the vocabulary (some above 1), the top k's 1..k."""
    path, hf_model = checkpoint
    llm = LLM(path, device="cpu", dtype="float32")
    batch = prompts(hf_model.config.vocab_size, (6, 11), seed=4)
    params = SamplingParams(n=2, temperature=1.5, seed=7, max_tokens=8, ignore_eos=True, logprobs=k)
    outs = llm.generate(batch, params, use_tqdm=False)
    for out in outs:
        check_sampled(out, hf_model, k)
    ranks = [next(iter(e.values())).rank for out in outs for c in out.outputs for e in c.logprobs]
    assert max(ranks) > 1, "every sampled token was the most likely: the test shows nothing"


def test_logprobs_dict_puts_the_scored_token_first_once():
    """The runner's (ids, logprobs, rank) as vLLM's dict: the scored token keeps its own rank and place
    where it is also among the top k; the others are ranked by their place in the top k."""
    texts = TokenTexts(TOKENIZER)
    got = logprobs_dict(([66, 65, 66, 67], [-1.0, -0.5, -1.0, -2.0], 2), texts)
    assert got == {66: Logprob(-1.0, 2, "B"), 65: Logprob(-0.5, 1, "A"), 67: Logprob(-2.0, 3, "C")}
    assert list(got) == [66, 65, 67]
    assert logprobs_dict(([70], [float("-inf")], 9), texts) == {70: Logprob(float("-inf"), 9, "F")}
    assert texts(97) == "a"
