"""StopStringChecker: matches across deltas, include option, hold-back for streaming (CPU)."""
from __future__ import annotations

import random

import pytest

from engine.detokenizer import IncrementalDetokenizer, StopStringChecker
from models.tokenizer import byte_tokenizer


def stream(checker: StopStringChecker, deltas: list[str], exact_hold: bool = False):
    """Feed deltas like the engine does; returns (final text, streamed chunks, stop string or None)."""
    text, sent, chunks = "", 0, []
    for delta in deltas:
        text += delta
        match = checker.check(text, len(delta))
        if match is not None:
            stop, keep = match
            text = text[:keep]
            chunks.append(text[sent:])
            return text, chunks, stop
        hold = checker.hold_back_len_for(text) if exact_hold else checker.hold_back_len
        upto = max(sent, len(text) - hold)
        chunks.append(text[sent:upto])
        sent = upto
    chunks.append(text[sent:])
    return text, chunks, None


def reference(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """The stop string whose first occurrence ends first (then the longer one) in the full text."""
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    idx, stop = min(hits, key=lambda h: (h[0] + len(h[1]), h[0]))
    return text[: idx + len(stop) if include else idx], stop


def split_randomly(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("exact_hold", [False, True])
def test_random_streams_match_reference(include, exact_hold):
    rng = random.Random(3)
    alphabet = "ab世😀 "
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(2)]
        checker = StopStringChecker(stops, include)
        final, chunks, stop = stream(checker, split_randomly(text, rng), exact_hold)
        assert (final, stop) == reference(text, stops, include)
        assert "".join(chunks) == final                  # nothing streamed is ever taken back
        if not include and stop is not None:
            assert stop not in final


def test_stop_spanning_deltas_is_cut_and_not_returned():
    checker = StopStringChecker(["END"])
    final, chunks, stop = stream(checker, ["Hello E", "N", "D and more"])
    assert (final, stop) == ("Hello ", "END")
    assert chunks == ["Hello", " ", ""]                  # 2 chars (len("END") - 1) always held back


def test_include_stop_str_in_output():
    checker = StopStringChecker(["END"], include_stop_str_in_output=True)
    assert checker.check("Hello END and", 9) == ("END", 9)
    assert checker.hold_back_len == 0


def test_only_new_region_is_searched():
    checker = StopStringChecker(["ab"])
    assert checker.check("xxab", 1) == ("ab", 2)         # completed by the new "b"
    assert checker.check("abxx", 1) is None              # an old match is not reported again
    assert checker.check("abxx", 0) is None


def test_stop_that_ends_first_wins():
    checker = StopStringChecker(["bcde", "cd", "xcd"])
    assert checker.check("abcdef", 6) == ("cd", 2)       # as if the text had come one character at a time
    assert checker.check("axcdef", 6) == ("xcd", 1)      # same end: the longer one


def test_hold_back_lengths():
    checker = StopStringChecker(["STOP", "xy"])
    assert checker.hold_back_len == 3
    assert checker.hold_back_len_for("abc ST") == 2
    assert checker.hold_back_len_for("abc x") == 1
    assert checker.hold_back_len_for("abc") == 0


def test_bad_stops_rejected():
    with pytest.raises(ValueError, match="stop"):
        StopStringChecker([""])
    with pytest.raises(ValueError, match="stop"):
        StopStringChecker([])


def test_stop_string_over_multibyte_tokens_with_detokenizer():
    tok = byte_tokenizer()
    ids = tok.encode("Hi 😀世界 then more", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], True)
    checker = StopStringChecker(["😀世"])
    deltas = []
    for i in ids:
        delta = detok.append([i])
        deltas.append(delta)
        if checker.check("".join(deltas), len(delta)):
            break
    final, _, stop = stream(checker, deltas)
    assert (final, stop) == ("Hi ", "😀世")
