"""create_app: the FastAPI application of the OpenAI-compatible server around one engine client."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.engine_client import EngineClient
from server.auth import APIKeyMiddleware
from server.engine_watchdog import watch_engine
from server.errors import APIError, from_validation_errors
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.protocol_utility import (DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList, TokenizeRequest,
                                     TokenizeResponse)
from server.serving import Serving, api_error, until_disconnect
from server.serving_chat import chat_prompt_ids, create_chat_completion
from server.serving_completions import create_completion
from server.stats_logger import StatsLogger, interval_from_env

logger = logging.getLogger(__name__)


def engine_version() -> str:
    """The installed package's version ("unknown" when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("engine")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def create_app(async_engine: EngineClient, served_model_name: str | Sequence[str] | None = None,
               api_key: str | Sequence[str] | None = None, options: ServerOptions | None = None,
               on_engine_death: Callable[[str], None] | None = None) -> FastAPI:
    """The app serving `async_engine` under `served_model_name` (default: the configured model): one
    name or several, which requests may use alike, each response carrying the name its request used;
    the first is the main one (the metrics' label, the name of a request that gives none). With
    `api_key` (one, or several: any of them), every route but /health, /ping, /version and /metrics needs
    `Authorization: Bearer <key>`. `options`: the server's own settings (server/options.py: chat
    template, parsers, stats line, CORS, request log, response role, tokens as ids). `on_engine_death`:
    called once with the reason when the engine is dead (server/engine_watchdog.py; `engine.serve` stops
    the server there); None: the server keeps answering 503."""
    options = options or ServerOptions()
    names = (served_model_name,) if isinstance(served_model_name, str) else tuple(served_model_name or ())
    names = names or (async_engine.config.model,)
    metrics = ServerMetrics(async_engine, names[0])
    serving = Serving(async_engine, names, metrics, options)
    lifespan = _lifespan(async_engine, not options.disable_log_stats, on_engine_death)
    app = FastAPI(title="engine OpenAI-compatible server", lifespan=lifespan)
    app.state.serving = serving
    app.state.metrics = metrics
    _add_error_handlers(app)
    _add_routes(app, serving, metrics)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(CORSMiddleware, allow_origins=options.allowed_origins,    # outermost: it answers preflights
                       allow_methods=options.allowed_methods, allow_headers=options.allowed_headers,
                       allow_credentials=options.allow_credentials)
    return app


def _lifespan(async_engine: EngineClient, log_stats: bool, on_engine_death: Callable[[str], None] | None):
    """While the app serves, its tasks: the engine's stats line every interval (vLLM's) where `log_stats`,
    the engine watchdog where `on_engine_death` is given; None where there is none."""
    jobs = []
    if log_stats:
        jobs.append(lambda: StatsLogger(async_engine).run(interval_from_env()))
    if on_engine_death is not None:
        jobs.append(lambda: watch_engine(async_engine, on_engine_death))
    if not jobs:
        return None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        tasks = [asyncio.create_task(job()) for job in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_errors(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return APIError(500, f"internal error: {exc!r}").response()


async def _respond(request: Request, work) -> Response:
    try:
        result = await until_disconnect(request, work)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - engine errors become their status (429, 503, ...)
        raise api_error(exc) from exc
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(result.model_dump())


def _request_id(request: Request, body) -> str | None:
    """What names the response, as vLLM's: the X-Request-Id header, else the body's `request_id`."""
    return request.headers.get("X-Request-Id") or body.request_id


def _add_routes(app: FastAPI, serving: Serving, metrics: ServerMetrics) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _respond(request, create_completion(serving, body, metrics.timer, _request_id(request, body)))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _respond(request, create_chat_completion(serving, body, metrics.timer,
                                                              _request_id(request, body)))

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, max_model_len=serving.max_model_len) for name in serving.model_names])

    @app.get("/health")
    async def health() -> Response:
        if serving.engine.is_healthy():
            return JSONResponse({"status": "ok"})
        return APIError(503, f"engine is not healthy (error: {serving.engine.error!r})").response()

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        """vLLM's /ping (SageMaker's health route): /health's answer."""
        return await health()

    @app.get("/version")
    async def version() -> dict:
        """vLLM's /version: {"version": the installed package's version}."""
        return {"version": engine_version()}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        serving.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", "prompt")
        if body.messages is not None:
            tokens = chat_prompt_ids(serving, body.messages, body.add_generation_prompt, tools=body.tools,
                                     continue_final_message=body.continue_final_message)
        else:
            tokens = serving.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=serving.max_model_len)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        serving.check_model(body.model)
        vocab = len(serving.tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens must be in [0, {vocab}), got {bad[:4]}", "tokens")
        return DetokenizeResponse(prompt=serving.tokenizer.decode(body.tokens))
