"""The engine's own process: LLMEngine stepped in a loop, commands in and packed outputs out.

`engine.engine_process.ProcessAsyncEngine` starts `run_engine_core` in a spawned process (as vLLM runs
its EngineCore), so that the model's steps and the server's HTTP work do not share one GIL. Two pipes:

- in: ("add", call_id, request_id, prompt, params, priority), ("abort", request_id), ("stats", call_id), ("shutdown",)
- out: ("ready", info) or ("failed", exc) once; then ("reply", call_id, value, exc) per call, ("outputs",
  [packed output], stats) after a step, ("idle", stats) every `IDLE_WAIT_S` without work, and ("dead",
  exc) if the loop fails. Outputs are packed as `engine.output_wire` packs them (the step's deltas only),
  made that way by the engine itself (`LLMEngine(packed_outputs=True)`): no step here copies an output's
  cumulative text, ids or logprobs.
"""
from __future__ import annotations

import logging
import pickle
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
IDLE_WAIT_S = 0.5           # an idle loop reports its stats this often (and waits this long for commands)
PROGRESS_S = 0.05           # a busy loop whose steps return no outputs (prefill chunks) reports this often


def run_engine_core(config: EngineConfig, commands: Connection, outputs: Connection, step_started: Any,
                    log_level: int = logging.WARNING) -> None:
    """The child process's main: build the engine, report ready (or why not), then serve commands.

    step_started: a shared double, the monotonic time of the step in progress (0.0 between steps),
    which the parent reads for its health check."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C stops the server, which then stops us
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    try:
        engine = LLMEngine(config, packed_outputs=True)
    except BaseException as exc:  # noqa: BLE001 - the parent raises it
        logger.exception("engine start-up failed")
        outputs.send(("failed", picklable(exc)))
        return
    outputs.send(("ready", dict(config=engine.config, tokenizer=engine.tokenizer, model_config=engine.model_config,
                                max_model_len=engine.max_model_len, stats=engine.get_stats(),
                                default_sampling_fields=engine.default_sampling_fields)))
    try:
        _Core(engine, outputs, step_started).serve(commands)
    except (EOFError, OSError):       # the parent went away
        pass
    except BaseException as exc:  # noqa: BLE001 - every waiting request must learn of it
        logger.exception("engine loop failed")
        try:
            outputs.send(("dead", picklable(exc)))
        except OSError:
            pass


def picklable(exc: BaseException) -> BaseException:
    """`exc` itself if it crosses a pipe, else a RuntimeError with its type and message."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _Core:
    def __init__(self, engine: LLMEngine, outputs: Connection, step_started: Any) -> None:
        self.engine = engine
        self.outputs = outputs
        self.step_started = step_started
        self.last_report = time.monotonic()

    def serve(self, commands: Connection) -> None:
        eng = self.engine
        while True:
            busy = eng.has_unfinished_requests()
            ready = commands.poll(0 if busy else IDLE_WAIT_S)
            if not busy and not ready:
                self.outputs.send(("idle", eng.get_stats()))
            while ready:
                if not self.run_command(*commands.recv()):
                    return
                ready = commands.poll(0)
            if eng.has_unfinished_requests():
                self.step_started.value = time.monotonic()
                step_outputs = eng.step()
                self.step_started.value = 0.0
                if step_outputs or time.monotonic() - self.last_report > PROGRESS_S:
                    self.report(step_outputs)

    def run_command(self, kind: str, *args: Any) -> bool:
        """Apply one command; False for shutdown."""
        eng = self.engine
        if kind == "add":
            call_id, request_id, prompt, params, priority = args
            try:
                eng.add_request(request_id, prompt, params, priority=priority)
            except Exception as exc:  # noqa: BLE001 - refused: the caller raises it
                self.outputs.send(("reply", call_id, None, picklable(exc)))
            else:
                self.outputs.send(("reply", call_id, None, None))
        elif kind == "abort":
            eng.abort_request(args)
        elif kind == "stats":
            self.outputs.send(("reply", args[0], eng.get_stats(), None))
        elif kind == "shutdown":
            return False
        else:
            raise ValueError(f"unknown engine command {kind!r}")
        return True

    def report(self, packed_outputs: list) -> None:
        self.outputs.send(("outputs", packed_outputs, self.engine.get_stats()))
        self.last_report = time.monotonic()
