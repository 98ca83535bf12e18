"""What the tool-call parsers (vLLM's `--tool-call-parser`) share: an answer's tool calls apart from its
content, for a whole text (`extract`) and for a stream of cumulative texts or their deltas (a ToolCallStream).

Each format lives in a module of its own (`tool_parser_hermes.py`, `tool_parser_llama3_json.py`) and
is reached by its flag name through `tool_parsers.py`. Here: the split of a text (ToolCallSplit), a
call read from a JSON object, the stream whose deltas are what each step's new text settles, the pair
a parser is (ToolCallParser), and a split as a response message's content and tool_calls.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from server.protocol_tools import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall, tool_call_id


@dataclass(frozen=True)
class ToolCallSplit:
    content: str
    calls: list[FunctionCall]


def function_call(obj: object, argument_keys: tuple[str, ...] = ("arguments",)) -> FunctionCall | None:
    """The call a decoded JSON value describes, or None when it is not an object with a string "name".
    Its arguments are the first of `argument_keys` it has (none: {}), as a JSON string; arguments
    written as a string are kept as they are."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = next((obj[key] for key in argument_keys if key in obj), {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return FunctionCall(name=obj["name"], arguments=arguments)


def tool_call_messages(split: ToolCallSplit) -> tuple[str | None, list[ToolCall]]:
    """A split as a response message's (content, tool_calls): with calls, empty content is None."""
    if not split.calls:
        return split.content, []
    return split.content or None, [ToolCall(function=call) for call in split.calls]


class ToolCallStream:
    """One choice's streamed parse: `feed(delta, final)` takes the answer's new text (the chat route: the
    reasoning stream's new content, where there is one) and returns the content it settles and the calls
    completed since. A format gives `read(delta, final)`: the content and calls this new text settles,
    reading only it and what the format holds back (all of it when final); a step's work is in the new
    text, not the answer's."""

    def __init__(self) -> None:
        self.num_calls = 0

    def read(self, delta: str, final: bool) -> tuple[str, list[FunctionCall]]:
        raise NotImplementedError

    def feed(self, delta: str, final: bool) -> tuple[str, list[DeltaToolCall]]:
        content, new_calls = self.read(delta, final)
        calls = [DeltaToolCall(index=i, id=tool_call_id(), type="function",
                               function=DeltaFunctionCall(name=call.name, arguments=call.arguments))
                 for i, call in enumerate(new_calls, start=self.num_calls)]
        self.num_calls += len(calls)
        return content, calls


@dataclass(frozen=True)
class ToolCallParser:
    """One --tool-call-parser format: the split of a whole answer, and the stream class of one choice.
    keeps_special_tokens: the answers it parses are decoded with skip_special_tokens false (vLLM's
    hermes: some models' tags are special tokens, which the default would drop from the text)."""
    extract: Callable[[str], ToolCallSplit]
    stream: Callable[[], ToolCallStream]
    keeps_special_tokens: bool = False
