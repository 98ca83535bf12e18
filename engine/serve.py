"""`python -m engine.serve M` (or `--model M`): the OpenAI-compatible HTTP server (uvicorn) with vLLM-style
flags (engine/serve_args.py): flags -> EngineConfig, ServerOptions and uvicorn's settings -> the engine's
process (or thread) -> uvicorn. Once the engine is dead the server stops and exits 1 (as vLLM's; env
ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH=1 or VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1: it keeps answering 503)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from engine.chat_template import load_chat_template
from engine.config import EngineConfig
from engine.serve_args import build_parser
from server.engine_watchdog import StopServerOnEngineDeath, iteration_timeout_s, keep_alive_on_engine_death
from server.options import ServerOptions

logger = logging.getLogger("engine.serve")


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
        model=model_from_args(args), tokenizer=args.tokenizer, revision=args.revision, dtype=args.dtype,
        device=args.device, block_size=args.block_size, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        num_kv_blocks=args.num_kv_blocks, gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching, enable_chunked_prefill=args.enable_chunked_prefill,
        enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling,
        attention_backend=args.attention_backend, seed=args.seed, load_format=args.load_format,
        max_queue_len=args.max_queue_len, kv_cache_dtype=args.kv_cache_dtype,
        generation_config=args.generation_config, scheduling_policy=args.scheduling_policy,
        max_logprobs=args.max_logprobs, hf_overrides=args.hf_overrides, trust_remote_code=args.trust_remote_code,
        tensor_parallel_size=args.tensor_parallel_size, tokenizer_revision=args.tokenizer_revision,
        download_dir=args.download_dir)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from the parsed flags; raises ValueError naming the bad flag."""
    if args.enable_log_requests and args.disable_log_requests:
        raise ValueError("--enable-log-requests and --disable-log-requests contradict each other: give one")
    return ServerOptions(
        chat_template=load_chat_template(args.chat_template), reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser, enable_auto_tool_choice=args.enable_auto_tool_choice,
        disable_log_stats=args.disable_log_stats, allowed_origins=tuple(args.allowed_origins),
        allowed_methods=tuple(args.allowed_methods), allowed_headers=tuple(args.allowed_headers),
        allow_credentials=args.allow_credentials, enable_log_requests=args.enable_log_requests,
        response_role=args.response_role, return_tokens_as_token_ids=args.return_tokens_as_token_ids)


ALL_INTERFACES = "0.0.0.0"      # where --host is not given, as vLLM's server (its socket binds "")


def uvicorn_options(args: argparse.Namespace) -> dict:
    """uvicorn.Config's settings from the flags; raises ValueError naming a bad one (port, TLS files)."""
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    for flag, path in (("--ssl-keyfile", args.ssl_keyfile), ("--ssl-certfile", args.ssl_certfile)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag} {path!r} is not a file")
    if args.ssl_keyfile and not args.ssl_certfile:
        raise ValueError("--ssl-keyfile needs --ssl-certfile (the certificate that goes with the key)")
    return dict(host=args.host or ALL_INTERFACES, port=args.port, log_level=args.uvicorn_log_level or args.log_level,
                access_log=not args.disable_uvicorn_access_log, root_path=args.root_path or "",
                ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                timeout_graceful_shutdown=0)    # see main: stop at once, as vLLM's server


def api_keys_from(args, environ) -> list[str] | str | None:
    """The keys that open the server: `--api-key` (one or several), else env ENGINE_API_KEY, else vLLM's
    VLLM_API_KEY (so a deployment written for vLLM keeps its key); None: no key needed."""
    return args.api_key or environ.get("ENGINE_API_KEY") or environ.get("VLLM_API_KEY") or None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        options = options_from_args(args)
        server_settings = uvicorn_options(args)
        keep_alive = keep_alive_on_engine_death(os.environ)
        stall_timeout_s = iteration_timeout_s(os.environ, config.torch_device().type)
    except ValueError as exc:
        parser.error(str(exc))          # exits with status 2
    api_key = api_keys_from(args, os.environ)
    from engine.engine_core import LOG_FORMAT
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)

    import uvicorn

    from engine.async_engine import AsyncEngine
    from engine.engine_process import ProcessAsyncEngine
    from server.app import create_app

    try:
        engine_class = ProcessAsyncEngine if args.engine_process else AsyncEngine
        async_engine = engine_class(config, stall_timeout_s=stall_timeout_s)
    except ValueError as exc:           # e.g. a backend that cannot serve this configuration
        print(f"python -m engine.serve: error: {exc}", file=sys.stderr)
        sys.exit(2)
    stop_on_death = None if keep_alive else StopServerOnEngineDeath()
    app = create_app(async_engine, args.served_model_name, api_key, options, on_engine_death=stop_on_death)
    server = uvicorn.Server(uvicorn.Config(app, **server_settings))
    if stop_on_death is not None:
        stop_on_death.server = server
    scheme = "https" if args.ssl_certfile else "http"
    logger.info("serving %s as %r on %s://%s:%d%s (API key %s)", config.model, args.served_model_name or [config.model],
                scheme, server_settings["host"], args.port, args.root_path or "", "required" if api_key else "off")
    # As vLLM's server, SIGINT / SIGTERM stop it at once: requests in flight are cancelled (their engine
    # requests aborted), not waited for. uvicorn raises the signal again once stopped; then the engine stops.
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        async_engine.shutdown()
    _exit_if_failed(server, stop_on_death)


def _exit_if_failed(server, stop_on_death: StopServerOnEngineDeath | None) -> None:
    """Exit 1 where the engine died (the watchdog logged why), 3 where uvicorn never started (as
    `uvicorn.run`: e.g. the port is taken); return otherwise (a signal stopped the server: status 0)."""
    if stop_on_death is not None and stop_on_death.reason is not None:
        sys.exit(1)
    if not server.started:
        sys.exit(3)


def _stop(signum, frame) -> None:
    """SIGTERM after uvicorn's shutdown: leave through `main`'s finally (the engine's shutdown)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
