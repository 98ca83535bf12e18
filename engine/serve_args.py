"""The flags of `python -m engine.serve`: vLLM's spellings and meanings (`vllm serve`), the argparse types
they need (vLLM's human-readable sizes, JSON lists and objects), and the vLLM flags this engine refuses
(`unsupported`: exit 2 naming the flag and why, rather than an option that would do nothing)."""
from __future__ import annotations

import argparse
import decimal
import json
import re

from engine.config import KV_CACHE_DTYPES, LOAD_FORMATS
from scheduler.waiting_queue import SCHEDULING_POLICIES
from server.reasoning import REASONING_PARSERS
from server.tool_parsers import TOOL_CALL_PARSERS

UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# vLLM flags users pass that this engine cannot honour, with what to do instead
UNSUPPORTED = {
    "--max-num-partial-prefills": "concurrent partial prefills are not a setting of this engine's scheduler "
                                  "(it cuts a prompt into a chunk only where a step's token budget ends, as "
                                  "vLLM's default of 1 does); tune --max-num-batched-tokens instead",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.serve", description="The OpenAI-compatible HTTP server "
                                "(uvicorn) with vLLM-style flags.")
    _model_flags(p)
    _engine_flags(p)
    _server_flags(p)
    _http_flags(p)
    for flag, reason in UNSUPPORTED.items():
        p.add_argument(flag, action=Unsupported, reason=reason)
    return p


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="preset:NAME, a local folder or a hub id (as `vllm serve MODEL`; or --model)")
    p.add_argument("--model", default=None, help="the same as MODEL")
    p.add_argument("--tokenizer", default=None, help="a folder or hub id (default: the model's own)")
    p.add_argument("--revision", default=None, help="the model's hub revision (branch, tag or commit)")
    p.add_argument("--tokenizer-revision", default=None,
                   help="the tokenizer's hub revision (--tokenizer's, else the model's hub id)")
    p.add_argument("--download-dir", default=None,
                   help="the hub cache to download the model and tokenizer to and load them from "
                        "(default: Hugging Face's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run config / tokenizer code shipped with the checkpoint")
    p.add_argument("--hf-overrides", type=json_object, default=None,
                   help="JSON object of config.json fields to change, e.g. '{\"rope_parameters\": {\"rope_type\": "
                        "\"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}}'")
    p.add_argument("--load-format", default="auto", choices=LOAD_FORMATS)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--generation-config", default="auto",
                   help="auto: the model's generation_config.json sets the default sampling parameters; "
                        "vllm: the engine's defaults; or a folder holding generation_config.json")


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="GPUs per model: only 1 (this engine runs a model on one GPU)")
    p.add_argument("--max-model-len", type=human_int, default=None,
                   help="context length in tokens; k / m suffixes count thousands / millions, K / M 1024 / 1024^2; "
                        "auto or -1: the model's length, or what the KV cache holds where less")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-queue-len", type=int, default=None, help="waiting requests beyond this get 429")
    p.add_argument("--scheduling-policy", default="fcfs", choices=SCHEDULING_POLICIES,
                   help="fcfs: requests in arrival order; priority: by each request's priority field "
                        "(lower first, ties by arrival); under fcfs a priority other than 0 is a 400")
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--enforce-eager", action="store_true", help="never replay CUDA graphs")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="auto: the model dtype; fp8 / fp8_e4m3: float8_e4m3fn, scale 1.0 (not flash_attn)")
    p.add_argument("--device", default="auto")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-logprobs", type=int, default=20,
                   help="the most logprobs / top_logprobs / prompt_logprobs a request may ask for (-1: no cap)")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True,
                   help="plan the next step while the GPU runs this one (default), or one step at a time")
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the engine in its own process (default; HTTP and the model's steps then do not "
                        "share one GIL), or on a thread of the server's process")


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="the model name(s) clients send, any of them (default: the model); the first is the main one")
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template, or a file holding one, used instead of the tokenizer's")
    p.add_argument("--chat-template-content-format", default="string", choices=("string",),
                   help="how message content reaches the chat template: string (text parts joined by newlines) "
                        "is the only format this server renders; vLLM's openai (a list of parts) is not supported")
    p.add_argument("--response-role", default="assistant",
                   help="the answer's role where a chat request asks for the generation prompt (default assistant)")
    p.add_argument("--reasoning-parser", default=None, choices=REASONING_PARSERS,
                   help="return chat answers' thinking (<think>...</think>) in reasoning_content")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='parse the tool calls of chat answers to requests whose tool_choice is "auto" '
                        "(the default when they give tools); needs --tool-call-parser")
    p.add_argument("--tool-call-parser", default=None, choices=tuple(TOOL_CALL_PARSERS),
                   help="the format the model writes its tool calls in (hermes: Qwen2.5, Qwen3; "
                        "llama3_json: Llama 3.1, 3.2, 3.3 Instruct)")
    p.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help='logprobs name each token as "token_id:{id}" instead of its text')
    p.add_argument("--disable-log-stats", action="store_true",
                   help="no periodic engine line (throughput, queue, KV-cache usage) in the log")
    p.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction, default=False,
                   help="log each request (params and prompt length; prompt ids at --log-level debug)")
    p.add_argument("--disable-log-requests", action="store_true",
                   help="requests are not logged (the default; vLLM's deprecated spelling)")


def _http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="the address to listen on (default: every interface, as vLLM's; "
                   "127.0.0.1 keeps the server to this machine)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", nargs="+", default=None,
                   help="require 'Authorization: Bearer KEY', any of the keys given (env ENGINE_API_KEY: one)")
    p.add_argument("--root-path", default=None, help="the path prefix of a path-routing proxy in front (FastAPI's "
                   "root_path)")
    p.add_argument("--ssl-keyfile", default=None, help="serve HTTPS with this private key (needs --ssl-certfile)")
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (chain)")
    for name, what in (("origins", "origins"), ("methods", "HTTP methods"), ("headers", "request headers")):
        p.add_argument(f"--allowed-{name}", type=json_list, default=["*"],
                       help=f"JSON list of the {what} browsers may use (CORS; default [\"*\"]: any)")
    p.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--uvicorn-log-level", default=None, choices=UVICORN_LOG_LEVELS,
                   help="uvicorn's log level (default: --log-level)")
    p.add_argument("--disable-uvicorn-access-log", action="store_true", help="no uvicorn line per HTTP request")


class Unsupported(argparse.Action):
    """A vLLM flag this engine cannot honour: using it exits 2 naming it and `reason` (argparse's usage
    error), with or without a value; `--help` lists it as not supported."""

    def __init__(self, option_strings, dest, reason: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, metavar="VALUE",
                         help=f"not supported: {reason}", **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is not supported: {self.reason}")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from exc


def json_list(text: str) -> list:
    """argparse type: a JSON list of strings."""
    value = _json(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f'must be a JSON list of strings, e.g. ["http://localhost:3000"], got {text}')
    return value


def json_object(text: str) -> dict:
    """argparse type: a JSON object (argparse reports the ArgumentTypeError as an invalid value)."""
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text}")
    return value


_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgKMG])")
_SCALES = {"k": 1000, "m": 1000**2, "g": 1000**3, "K": 1024, "M": 1024**2, "G": 1024**3}


def human_int(text: str) -> int:
    """argparse type as vLLM's: '32768', '32k' (32,000), '32K' (32,768), '25.6k' (25,600; no decimals
    with K / M / G); 'auto' is -1."""
    if text == "auto":
        return -1
    match = _SIZE.fullmatch(text)
    if match is None:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, optionally with k, m, g, K, M or G, or auto; "
                                             f"got {text!r}") from None
    number, suffix = match.groups()
    if suffix.isupper() and "." in number:
        raise argparse.ArgumentTypeError(f"no decimals with {suffix} (a power of 1024): did you mean "
                                         f"{number}{suffix.lower()}?")
    value = decimal.Decimal(number) * _SCALES[suffix]
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"must come to a whole number of tokens, got {text!r}")
    return int(value)
