"""vLLM's structured outputs, the choice kind: the params' validation (other kinds name themselves as not
supported), the choices' token table against a brute-force definition on random cases, and the Sampler
drawing only tokens that lead on to a choice, then EOS."""
import random

import pytest
import torch

from engine.penalties import apply_logit_processors
from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams
from engine.structured_outputs import ChoiceConstraint, StructuredOutputsParams

VOCAB = 64
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL = [False, True] if torch.cuda.is_available() else [False]     # the Triton sampling kernel: CUDA only here
EOS = (0, 1)


class ListEncoder:
    """A tokenizer stand-in: a choice of space-separated integers encodes to those ids."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        return [int(t) for t in text.split()]


def brute_force_allowed(sequences, output: tuple) -> set[int]:
    """Tokens after which the output is still a prefix of some choice, and EOS where it is one (or where
    it is off every choice)."""
    nxt = {seq[len(output)] for seq in sequences if len(seq) > len(output) and seq[:len(output)] == output}
    return nxt | set(EOS) if output in sequences or not nxt else nxt


def test_allowed_tokens_match_the_definition_on_random_choices():
    rng = random.Random(0)
    for _ in range(500):
        sequences = {tuple(rng.randrange(2, 6) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))}
        constraint = ChoiceConstraint.build([" ".join(map(str, s)) for s in sequences], ListEncoder(), VOCAB, EOS)
        for _ in range(10):
            output = tuple(rng.randrange(2, 6) for _ in range(rng.randint(0, 4)))
            assert set(constraint.allowed(output)) == brute_force_allowed(sequences, output), (sequences, output)


def test_a_choice_that_prefixes_another_may_end_or_go_on():
    constraint = ChoiceConstraint.build(["5 6", "5 6 7", "8"], ListEncoder(), VOCAB, EOS)
    assert constraint.allowed([]) == [5, 8]
    assert constraint.allowed([5, 6]) == [0, 1, 7]
    assert constraint.allowed([5, 6, 7]) == [0, 1]
    with pytest.raises(ValueError, match=r"structured_outputs choices must tokenize to token ids in \[0, 64\)"):
        ChoiceConstraint.build(["5 99"], ListEncoder(), VOCAB, EOS)


@pytest.mark.parametrize("kwargs, message", [
    (dict(choice=["a"], json={"type": "object"}), "structured_outputs.json is not supported"),
    (dict(regex="a+"), "structured_outputs.regex is not supported"),
    (dict(grammar="root ::= x"), "structured_outputs.grammar is not supported"),
    (dict(json_object=True), "structured_outputs.json_object is not supported"),
    (dict(choice=[]), "structured_outputs.choice must be a non-empty list of non-empty strings"),
    (dict(choice=["a", ""]), "structured_outputs.choice must be a non-empty list"),
    (dict(choice="ab"), "structured_outputs.choice must be a non-empty list"),
    (dict(), "structured_outputs.choice must be a non-empty list"),
])
def test_params_other_kinds_and_bad_choices_are_errors_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StructuredOutputsParams(**kwargs)


def test_params_from_dict_and_in_sampling_params():
    assert StructuredOutputsParams.from_dict({"choice": ["x"], "json": None}).choice == ["x"]
    with pytest.raises(ValueError, match="unknown keys"):
        StructuredOutputsParams.from_dict({"choice": ["x"], "choices": ["y"]})
    with pytest.raises(ValueError, match="must be an object"):
        StructuredOutputsParams.from_dict(["x"])
    options = {"disable_fallback": True, "disable_any_whitespace": True, "whitespace_pattern": " "}
    assert StructuredOutputsParams.from_dict({"choice": ["x"], **options}).choice == ["x"]   # vLLM's options
    params = SamplingParams(structured_outputs={"choice": ["x"]})
    assert params.structured_outputs == StructuredOutputsParams(choice=["x"]) and params.uses_output_history


def choice_request(constraint: ChoiceConstraint, output: list[int], **params) -> Request:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(choice=["stand-in"]), **params)
    req = Request("r", [2, 3], params, eos_token_ids=EOS, choice=constraint)
    for token in output:
        req.append_output_token(token)
    return req


def test_allowed_token_ids_narrow_a_choice_and_min_tokens_never_hold_back_its_end():
    constraint = ChoiceConstraint.build(["5 6", "8 9"], ListEncoder(), VOCAB, EOS)
    rows = [choice_request(constraint, [], allowed_token_ids=[8, 30]),     # both allow 8
            choice_request(constraint, [], allowed_token_ids=[30]),        # none in common: the choice's
            choice_request(constraint, [5, 6], min_tokens=5)]              # the choice ends: EOS stays allowed
    meta = SamplingMetadata.from_requests(rows, VOCAB, DEVICE)
    logits = torch.zeros(3, VOCAB, device=DEVICE)
    allowed = torch.isfinite(apply_logit_processors(logits, meta)).cpu()
    assert [row.nonzero().flatten().tolist() for row in allowed] == [[8], [5, 8], list(EOS)]


@pytest.mark.parametrize("use_kernel", KERNEL)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_draws_only_what_leads_to_a_choice(temperature, use_kernel):
    constraint = ChoiceConstraint.build(["5 6", "5 6 7", "8 9"], ListEncoder(), VOCAB, EOS)
    params = SamplingParams(temperature=temperature, structured_outputs=StructuredOutputsParams(choice=["stand-in"]))
    gen = torch.Generator().manual_seed(0)
    for output, expected in [([], {5, 8}), ([5], {6}), ([5, 6], {0, 1, 7}), ([8, 9], {0, 1})]:
        for _ in range(10):
            req = Request("r", [2, 3], params, eos_token_ids=EOS, choice=constraint)
            for token in output:
                req.append_output_token(token)
            meta = SamplingMetadata.from_requests([req], VOCAB, DEVICE)
            logits = (torch.randn(1, VOCAB, generator=gen) * 4).to(DEVICE)
            assert Sampler(use_kernel=use_kernel)(logits, meta).sampled_token_ids.item() in expected
