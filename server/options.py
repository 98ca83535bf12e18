"""ServerOptions: the server's own settings (not the engine's), frozen and validated at construction."""
from __future__ import annotations

from dataclasses import dataclass

from engine.checks import check
from server.reasoning import REASONING_PARSERS
from server.tool_parsers import TOOL_CALL_PARSERS


@dataclass(frozen=True)
class ServerOptions:
    """chat_template: a Jinja string used instead of the tokenizer's (--chat-template; None: the
    tokenizer's). reasoning_parser: puts chat answers' thinking in `reasoning_content`
    (--reasoning-parser). tool_call_parser: the format of the model's tool calls (--tool-call-parser),
    parsed where enable_auto_tool_choice (--enable-auto-tool-choice) lets tool_choice be "auto".
    disable_log_stats (--disable-log-stats): no periodic engine line in the log (server/stats_logger.py).
    allowed_origins, allowed_methods, allowed_headers, allow_credentials: the CORS policy browsers are
    told (vLLM's flags and defaults: any origin, method and header; no credentials).
    enable_log_requests (--enable-log-requests): a log line per engine request (its params and prompt
    length at INFO, its prompt ids at DEBUG), as vLLM's. response_role (--response-role): the answer's
    role where a chat request asks for the generation prompt. return_tokens_as_token_ids
    (--return-tokens-as-token-ids): logprobs name each token as "token_id:{id}", not its text."""

    chat_template: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    disable_log_stats: bool = False
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    enable_log_requests: bool = False
    response_role: str = "assistant"
    return_tokens_as_token_ids: bool = False

    def __post_init__(self) -> None:
        check(self.reasoning_parser in (None, *REASONING_PARSERS), "--reasoning-parser", self.reasoning_parser,
              f"must be one of {REASONING_PARSERS}")
        check(self.tool_call_parser in (None, *TOOL_CALL_PARSERS), "--tool-call-parser", self.tool_call_parser,
              f"must be one of {tuple(TOOL_CALL_PARSERS)}")
        for name in ("allowed_origins", "allowed_methods", "allowed_headers"):
            value = getattr(self, name)
            check(isinstance(value, tuple) and all(isinstance(v, str) for v in value), f"--{name.replace('_', '-')}",
                  value, "must be a list of strings")
        check(isinstance(self.response_role, str) and bool(self.response_role.strip()), "--response-role",
              self.response_role, "must be a non-empty role name")
        check(not self.enable_auto_tool_choice or self.tool_call_parser is not None, "--enable-auto-tool-choice",
              self.tool_call_parser, "requires --tool-call-parser")
