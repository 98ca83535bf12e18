"""The tool-call parsers by their `--tool-call-parser` name (vLLM's names)."""
from __future__ import annotations

from server.tool_calls import ToolCallParser
from server.tool_parser_hermes import HERMES
from server.tool_parser_llama3_json import LLAMA3_JSON

TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {"hermes": HERMES, "llama3_json": LLAMA3_JSON}
