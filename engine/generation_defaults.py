"""The model's generation_config.json as the default sampling parameters (vLLM's `--generation-config`).

Model authors ship the sampling settings a model is meant to run with in generation_config.json (Qwen3:
temperature 0.6, top_p 0.95, top_k 20). As vLLM does, a request that leaves such a field unset gets the
model's value instead of the engine's default. Mode "auto" reads the model's own folder, "vllm" ignores
the file (the engine's defaults), any other value names a folder (or hub id) to read it from.

Only the fields that differ from a fresh `GenerationConfig()` count (`to_diff_dict`), so a default of
transformers' class is never taken for the model's choice; a missing file or field changes nothing.
"""
from __future__ import annotations

import logging
import os

from transformers import GenerationConfig

from engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"
AUTO, ENGINE_DEFAULTS = "auto", "vllm"
# generation_config.json's name -> SamplingParams' name (HF's max_new_tokens is vLLM's max_tokens).
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def load_generation_config(path: str | None) -> GenerationConfig | None:
    """The GenerationConfig of a folder (or hub id); None when there is none (no path, no file)."""
    if path is None:
        return None
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, GENERATION_CONFIG_FILE)):
        return None          # a local folder without the file: never ask the hub
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def default_sampling_fields(model_path: str | None, mode: str = AUTO) -> dict:
    """SamplingParams field -> the model's default, for the fields its generation config sets.

    model_path: the resolved model folder (None for presets); mode: "auto", "vllm" or a folder.
    Raises ValueError when a value is one SamplingParams refuses (every request would fail)."""
    if mode == ENGINE_DEFAULTS:
        return {}
    source = model_path if mode == AUTO else mode
    config = load_generation_config(source)
    if config is None:
        if mode != AUTO:
            logger.warning("no %s found at %r; the engine's default sampling parameters apply",
                           GENERATION_CONFIG_FILE, mode)
        return {}
    diff = config.to_diff_dict()
    fields = {ours: diff[theirs] for theirs, ours in SAMPLING_FIELDS.items() if diff.get(theirs) is not None}
    try:
        SamplingParams(**fields)
    except ValueError as exc:
        raise ValueError(f"the generation config at {source!r} sets a default sampling parameter the engine "
                         f"refuses: {exc}; pass generation_config='vllm' (--generation-config vllm) to use "
                         "the engine's defaults") from exc
    if fields:
        logger.warning("Default sampling parameters have been overridden by the model's generation config: %s; "
                       "pass --generation-config vllm to use the engine's defaults", fields)
    return fields
