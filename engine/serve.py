"""`python -m engine.serve M` (or `--model M`): the OpenAI-compatible HTTP server (uvicorn) with vLLM-style
flags."""
from __future__ import annotations

import argparse
import decimal
import json
import logging
import os
import re
import signal
import sys

from engine.chat_template import load_chat_template
from engine.config import KV_CACHE_DTYPES, LOAD_FORMATS, EngineConfig
from scheduler.waiting_queue import SCHEDULING_POLICIES
from server.options import ServerOptions
from server.reasoning import REASONING_PARSERS
from server.tool_parsers import TOOL_CALL_PARSERS

logger = logging.getLogger("engine.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.serve", description=__doc__)
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="preset:NAME, a local folder or a hub id (as `vllm serve MODEL`; or --model)")
    p.add_argument("--model", default=None, help="the same as MODEL")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run config / tokenizer code shipped with the checkpoint")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="GPUs per model: only 1 (this engine runs a model on one GPU)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="the model name(s) clients send, any of them (default: the model); the first is the main one")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (env ENGINE_API_KEY)")
    p.add_argument("--max-model-len", type=human_int, default=None,
                   help="context length in tokens; k / m suffixes count thousands / millions, K / M 1024 / 1024^2; "
                        "auto or -1: the model's length, or what the KV cache holds where less")
    p.add_argument("--hf-overrides", type=json_object, default=None,
                   help="JSON object of config.json fields to change, e.g. '{\"rope_parameters\": {\"rope_type\": "
                        "\"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}}'")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template, or a file holding one, used instead of the tokenizer's")
    p.add_argument("--reasoning-parser", default=None, choices=REASONING_PARSERS,
                   help="return chat answers' thinking (<think>...</think>) in reasoning_content")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='parse the tool calls of chat answers to requests whose tool_choice is "auto" '
                        "(the default when they give tools); needs --tool-call-parser")
    p.add_argument("--tool-call-parser", default=None, choices=tuple(TOOL_CALL_PARSERS),
                   help="the format the model writes its tool calls in (hermes: Qwen2.5, Qwen3; "
                        "llama3_json: Llama 3.1, 3.2, 3.3 Instruct)")
    p.add_argument("--max-queue-len", type=int, default=None, help="waiting requests beyond this get 429")
    p.add_argument("--scheduling-policy", default="fcfs", choices=SCHEDULING_POLICIES,
                   help="fcfs: requests in arrival order; priority: by each request's priority field "
                        "(lower first, ties by arrival); under fcfs a priority other than 0 is a 400")
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--enforce-eager", action="store_true", help="never replay CUDA graphs")
    p.add_argument("--load-format", default="auto", choices=LOAD_FORMATS)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="auto: the model dtype; fp8 / fp8_e4m3: float8_e4m3fn, scale 1.0 (not flash_attn)")
    p.add_argument("--generation-config", default="auto",
                   help="auto: the model's generation_config.json sets the default sampling parameters; "
                        "vllm: the engine's defaults; or a folder holding generation_config.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-logprobs", type=int, default=20,
                   help="the most logprobs / top_logprobs / prompt_logprobs a request may ask for (-1: no cap)")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the engine in its own process (default; HTTP and the model's steps then do not "
                        "share one GIL), or on a thread of the server's process")
    for name, what in (("origins", "origins"), ("methods", "HTTP methods"), ("headers", "request headers")):
        p.add_argument(f"--allowed-{name}", type=json_list, default=["*"],
                       help=f"JSON list of the {what} browsers may use (CORS; default [\"*\"]: any)")
    p.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    p.add_argument("--disable-log-stats", action="store_true",
                   help="no periodic engine line (throughput, queue, KV-cache usage) in the log")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


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


def model_from_args(args: argparse.Namespace) -> str:
    """The model, given as MODEL or --model (MODEL wins where both are given, as in vLLM, with a warning)."""
    if args.model_tag and args.model and args.model_tag != args.model:
        logger.warning("serving %r, the MODEL argument; --model %r is ignored", args.model_tag, args.model)
    model = args.model_tag or args.model
    if not model:
        raise ValueError("name the model to serve: python -m engine.serve MODEL (preset:NAME, a folder or a hub id)")
    return model


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """EngineConfig from the parsed flags; raises ValueError naming the bad field."""
    return EngineConfig(
        model=model_from_args(args), tokenizer=args.tokenizer, revision=args.revision, dtype=args.dtype, device=args.device,
        block_size=args.block_size, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization, enable_prefix_caching=args.enable_prefix_caching,
        enable_chunked_prefill=args.enable_chunked_prefill, enforce_eager=args.enforce_eager,
        attention_backend=args.attention_backend, seed=args.seed, load_format=args.load_format,
        max_queue_len=args.max_queue_len, kv_cache_dtype=args.kv_cache_dtype,
        generation_config=args.generation_config, scheduling_policy=args.scheduling_policy,
        max_logprobs=args.max_logprobs, hf_overrides=args.hf_overrides, trust_remote_code=args.trust_remote_code,
        tensor_parallel_size=args.tensor_parallel_size)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        options = ServerOptions(
            load_chat_template(args.chat_template), args.reasoning_parser, args.tool_call_parser,
            args.enable_auto_tool_choice, args.disable_log_stats, allowed_origins=tuple(args.allowed_origins),
            allowed_methods=tuple(args.allowed_methods), allowed_headers=tuple(args.allowed_headers),
            allow_credentials=args.allow_credentials)
    except ValueError as exc:
        parser.error(str(exc))          # exits with status 2
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    api_key = args.api_key or os.environ.get("ENGINE_API_KEY") or None
    from engine.engine_core import LOG_FORMAT
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)

    import uvicorn

    from engine.async_engine import AsyncEngine
    from engine.engine_process import ProcessAsyncEngine
    from server.app import create_app

    try:
        async_engine = ProcessAsyncEngine(config) if args.engine_process else AsyncEngine(config)
    except ValueError as exc:           # e.g. a backend that cannot serve this configuration
        print(f"python -m engine.serve: error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(async_engine, args.served_model_name, api_key, options)
    logger.info("serving %s as %r on http://%s:%d (API key %s)", config.model,
                args.served_model_name or [config.model], args.host, args.port, "required" if api_key else "off")
    # As vLLM's server, SIGINT / SIGTERM stop it at once: requests in flight are cancelled (their engine
    # requests aborted), not waited for. uvicorn raises the signal again once stopped; then the engine stops.
    signal.signal(signal.SIGTERM, _stop)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=0)
    except KeyboardInterrupt:
        pass
    finally:
        async_engine.shutdown()


def _stop(signum, frame) -> None:
    """SIGTERM after uvicorn's shutdown: leave through `main`'s finally (the engine's shutdown)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
