"""A conversation -> prompt token ids through a chat template (the tokenizer's, or one given as a Jinja
string), for `LLM.chat()` and the server's /v1/chat/completions; `load_chat_template` reads the value of
`--chat-template` (a file or the template itself) as vLLM does."""
from __future__ import annotations

import json
import os

NO_TEMPLATE = ("this model's tokenizer has no chat template; pass chat_template=... "
               "(server: --chat-template FILE_OR_STRING) or use completions / generate()")


def render_chat(tokenizer, conversation: list[dict], add_generation_prompt: bool = True,
                chat_template: str | None = None, chat_template_kwargs: dict | None = None,
                tools: list[dict] | None = None, continue_final_message: bool = False) -> list[int]:
    """The prompt ids of one conversation (a list of {"role", "content"} dicts): the chat template rendered to text
    (`chat_template` overrides the tokenizer's; `chat_template_kwargs` are extra template variables; `tools`,
    OpenAI-shaped tool dicts, is the template's `tools` variable), then tokenized without adding special tokens (the
    template writes them). Assistant messages' tool calls reach the template with their JSON-string arguments parsed
    into dicts and content parts joined (see `_template_message`). continue_final_message (vLLM's): the last message
    is left open, its end-of-turn cut, for the model to go on with it (instead of add_generation_prompt's new
    assistant turn). Raises ValueError saying what to change when there is no template, the conversation is
    malformed, both of those are asked for, or the template fails."""
    if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
        raise ValueError("a conversation must be a list of {'role': ..., 'content': ...} dicts, got "
                         f"{type(conversation).__name__}: {str(conversation)[:80]}")
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(NO_TEMPLATE)
    if continue_final_message and add_generation_prompt:
        raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    kwargs = dict(chat_template_kwargs or {})
    if tools is not None:
        kwargs["tools"] = tools
    messages = [_template_message(m) for m in conversation]
    try:
        text = tokenizer.apply_chat_template(messages,
                                             chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             continue_final_message=continue_final_message, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a template error is the caller's input error
        raise ValueError(f"cannot apply the chat template: {exc}") from exc
    return tokenizer.encode(text, add_special_tokens=False)


def message_text(content):
    """A message's content as text: a list of OpenAI content parts ({"type": "text", "text": ...}) joined
    with newlines, as vLLM joins them for text-only templates; anything else as it is. Raises ValueError
    for a part of another type (this engine reads text only)."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ValueError(f"only text content parts are supported, got {kind!r}")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def _template_message(message: dict) -> dict:
    """`message` as the template reads it: content parts joined (`message_text`), and each tool call's
    `function.arguments`, a JSON string in OpenAI's shape, becomes the parsed value (templates such as
    Qwen's print `arguments | tojson` unless it is a string; vLLM parses it too); missing or empty
    arguments become {}, a string that is not JSON stays. The caller's dicts are not changed."""
    if isinstance(message.get("content"), list):
        message = {**message, "content": message_text(message["content"])}
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    return {**message, "tool_calls": [_parsed_arguments(c) for c in calls]}


def _parsed_arguments(call):
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    if not arguments:
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return {**call, "function": {**function, "arguments": arguments}}


def load_chat_template(value: str | None) -> str | None:
    """`--chat-template`'s value as a template: the text of an existing file, else the value itself if it
    looks like a Jinja template (has "{{" or "{%"); None stays None (the tokenizer's template is used)."""
    if value is None:
        return None
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--chat-template: cannot read {value!r}: {exc}") from exc
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"--chat-template must be a file path or a Jinja template string, got {value!r} "
                     "(no such file, and no '{{' or '{%' in it)")
