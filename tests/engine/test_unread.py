"""Unread (engine/unread.py): what a consumer that fell behind reads, per output kind. DELTA: the unread
outputs' deltas joined (text, token ids, logprobs; the newest finish; the first output's prompt logprobs);
CUMULATIVE: the newest output, its deltas all since the last read; FINAL_ONLY: its one output as it came."""
from __future__ import annotations

from engine.outputs import CompletionOutput, Logprob, RequestOutput
from engine.sampling_params import RequestOutputKind
from engine.unread import Unread

PROMPT_LOGPROBS = [None, {7: Logprob(-0.5, 1, "p")}]


def read_now(unread: Unread):
    """What `get` returns without waiting (it must not wait: something is unread)."""
    coro = unread.get()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("nothing was unread")


def lp(token: int) -> dict:
    return {token: Logprob(-1.0 - token / 100, 1, chr(token))}


def delta(index: int, text: str, ids: list[int], finish: str | None = None, logprobs: bool = True):
    return CompletionOutput(index, text, ids, finish, "s" if finish == "stop" else None,
                            [lp(t) for t in ids] if logprobs else None, text_delta=text, token_ids_delta=ids)


def request(outputs: list[CompletionOutput], finished: bool = False, prompt_logprobs=None) -> RequestOutput:
    return RequestOutput("r", "p", [1, 2], outputs, finished, num_cached_tokens=16, prompt_logprobs=prompt_logprobs)


def test_unread_delta_outputs_are_joined():
    """n = 2: choice 1 ends in the second output, whose later outputs carry it with nothing new."""
    unread = Unread(RequestOutputKind.DELTA)
    steps = [request([delta(0, "ab", [97, 98]), delta(1, "x", [120])], prompt_logprobs=PROMPT_LOGPROBS),
             request([delta(0, "c", [99]), delta(1, "yz", [121, 122], "stop")]),
             request([delta(0, "", [200]), delta(1, "", [], "stop")]),
             request([delta(0, "é", [233], "length"), delta(1, "", [], "stop")], finished=True)]
    for out in steps[:3]:
        unread.put(out)
    first = read_now(unread)
    assert [(c.index, c.text, c.token_ids, c.finish_reason, c.stop_reason) for c in first.outputs] == [
        (0, "abc", [97, 98, 99, 200], None, None), (1, "xyz", [120, 121, 122], "stop", "s")]
    assert [c.logprobs for c in first.outputs] == [[lp(97), lp(98), lp(99), lp(200)], [lp(120), lp(121), lp(122)]]
    assert all((c.text_delta, c.token_ids_delta) == (c.text, c.token_ids) for c in first.outputs)
    assert first.prompt_logprobs == PROMPT_LOGPROBS and not first.finished and first.num_cached_tokens == 16
    unread.put(steps[3])
    assert read_now(unread) is steps[3]            # one unread output: as it came
    assert [c.text for c in steps[0].outputs] == ["ab", "x"]       # the outputs joined are not changed


def test_unread_delta_outputs_without_logprobs_join_to_none():
    unread = Unread(RequestOutputKind.DELTA)
    unread.put(request([delta(0, "a", [97], logprobs=False)]))
    unread.put(request([delta(0, "b", [98], "length", logprobs=False)], finished=True))
    joined = read_now(unread)
    assert (joined.outputs[0].text, joined.outputs[0].logprobs, joined.finished) == ("ab", None, True)
    assert joined.prompt_logprobs is None


def cumulative(text: str, ids: list[int], text_delta: str, ids_delta: list[int]) -> RequestOutput:
    return request([CompletionOutput(0, text, ids, text_delta=text_delta, token_ids_delta=ids_delta)])


def test_unread_cumulative_outputs_keep_the_newest_with_the_deltas_since_the_last_read():
    unread = Unread(RequestOutputKind.CUMULATIVE)
    unread.put(cumulative("a", [97], "a", [97]))
    assert read_now(unread).outputs[0].text_delta == "a"
    for text, ids, d_text, d_ids in [("ab", [97, 98], "b", [98]), ("abc", [97, 98, 99], "c", [99])]:
        unread.put(cumulative(text, ids, d_text, d_ids))
    merged = read_now(unread).outputs[0]
    assert (merged.text, merged.token_ids, merged.text_delta, merged.token_ids_delta) == (
        "abc", [97, 98, 99], "bc", [98, 99])


def test_unread_final_only_output_is_read_as_it_came_then_the_error():
    unread = Unread(RequestOutputKind.FINAL_ONLY)
    final = request([delta(0, "all of it", [1, 2, 3], "length")], finished=True)
    unread.put(final)
    error = RuntimeError("engine died")
    unread.put(error)
    assert read_now(unread) is final and read_now(unread) is error
