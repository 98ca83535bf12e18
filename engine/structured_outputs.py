"""vLLM's structured outputs, the `choice` kind: the answer is exactly one of the given strings.

Each choice is tokenized once (LLMEngine.add_request) and the choices' token sequences become a table
{tokens generated so far: the tokens that may come next}. At each step a request's allowed tokens are
those that keep its output on the way to some choice, plus EOS once the output is a whole choice (EOS
alone when no longer choice goes on from there). The constraint follows each choice's tokenization by
the tokenizer; an answer spelled in other tokens is never drawn. vLLM's other kinds (json, regex,
grammar, json_object, structural_tag) need a grammar engine this project does not have: naming one is a
ValueError.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from engine.bad_words import Encoder

_UNSUPPORTED = ("json", "regex", "grammar", "json_object", "structural_tag")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """SamplingParams.structured_outputs, as vLLM's: `choice` (a non-empty list of non-empty strings) is
    supported; setting one of the other kinds is a ValueError that names it. vLLM's options for grammars
    (disable_fallback, disable_any_whitespace, disable_additional_properties, whitespace_pattern) are
    accepted and change nothing for a choice."""

    choice: list[str] | None = None
    json: Any = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        for name in _UNSUPPORTED:
            if getattr(self, name) is not None:
                raise ValueError(f"structured_outputs.{name} is not supported: it needs a grammar engine, which "
                                 "this engine does not have; only structured_outputs.choice is")
        choice = self.choice
        if not (isinstance(choice, (list, tuple)) and choice and all(isinstance(c, str) and c for c in choice)):
            raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, got {choice!r}")
        object.__setattr__(self, "choice", list(choice))

    @classmethod
    def from_dict(cls, value: Any) -> StructuredOutputsParams:
        """From the server's JSON object ({"choice": [...]}; null keys are unset); other keys: ValueError."""
        if not isinstance(value, dict):
            raise ValueError(f"structured_outputs must be an object such as {{\"choice\": [...]}}, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"structured_outputs has unknown keys {unknown}; this engine supports 'choice' (and "
                             "accepts vLLM's grammar options)")
        return cls(**{k: v for k, v in value.items() if v is not None})


@dataclass(frozen=True)
class ChoiceConstraint:
    """The token table of one request's choices. next_tokens: {a prefix of some choice's tokens: the
    tokens that may follow it}; complete: the choices' whole token sequences; eos_token_ids: what may
    end an answer."""

    next_tokens: dict[tuple[int, ...], frozenset[int]]
    complete: frozenset[tuple[int, ...]]
    eos_token_ids: tuple[int, ...]

    @classmethod
    def build(cls, choices: Sequence[str], tokenizer: Encoder, vocab_size: int,
              eos_token_ids: Sequence[int]) -> ChoiceConstraint:
        """Tokenize the choices; a token id outside [0, vocab_size) is a ValueError naming the field."""
        sequences = [tuple(tokenizer.encode(c, add_special_tokens=False)) for c in choices]
        bad = sorted({t for seq in sequences for t in seq if not 0 <= t < vocab_size})
        if bad or not all(sequences):
            raise ValueError(f"structured_outputs choices must tokenize to token ids in [0, {vocab_size}), got "
                             f"{bad[:5] or 'an empty choice'}")
        table: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            for k in range(len(seq)):
                table.setdefault(seq[:k], set()).add(seq[k])
        return cls({prefix: frozenset(nxt) for prefix, nxt in table.items()}, frozenset(sequences),
                   tuple(eos_token_ids))

    def allowed(self, output_token_ids: Sequence[int]) -> list[int]:
        """The tokens the next step may sample after `output_token_ids` (the request's generated tokens):
        those leading on to a choice, and EOS where a choice ends (EOS alone once off every choice, which
        only ignore_eos allows)."""
        done = tuple(output_token_ids)
        allowed = set(self.next_tokens.get(done, ()))
        if done in self.complete or not allowed:
            allowed.update(self.eos_token_ids)
        return sorted(allowed)
