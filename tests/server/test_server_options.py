"""ServerOptions refuses what the server cannot serve, naming the flag."""
import pytest

from server.options import ServerOptions


@pytest.mark.parametrize("kwargs, says", [
    (dict(reasoning_parser="o1"), "--reasoning-parser must be one of ('qwen3', 'deepseek_r1'), got 'o1'"),
    (dict(tool_call_parser="mistral"), "--tool-call-parser must be one of ('hermes', 'llama3_json'), got 'mistral'"),
    (dict(enable_auto_tool_choice=True), "--enable-auto-tool-choice requires --tool-call-parser"),
    (dict(allowed_origins="*"), "--allowed-origins must be a list of strings, got '*'"),
    (dict(allowed_headers=("a", 1)), "--allowed-headers must be a list of strings"),
])
def test_bad_options_are_refused_naming_the_flag(kwargs, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        ServerOptions(**kwargs)


def test_good_options_are_kept():
    options = ServerOptions("{{ x }}", "qwen3", "hermes", True)
    assert (options.chat_template, options.reasoning_parser, options.tool_call_parser,
            options.enable_auto_tool_choice) == ("{{ x }}", "qwen3", "hermes", True)
