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


def default_sampling_fields(model_config: GenerationConfig | None, mode: str = AUTO) -> dict:
    """SamplingParams field -> the model's default, for the fields its generation config sets.

    model_config: the model folder's generation config, already loaded (`load_generation_config` of the
    resolved folder; None: no file, or a preset), taken in mode "auto"; "vllm" gives no defaults; any
    other mode names a folder whose own file is read instead.
    Raises ValueError when a value is one SamplingParams refuses (every request would fail)."""
    if mode == ENGINE_DEFAULTS:
        return {}
    config = model_config if mode == AUTO else load_generation_config(mode)
    source = "the model's folder" if mode == AUTO else repr(mode)
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
        raise ValueError(f"the generation config at {source} sets a default sampling parameter the engine "
                         f"refuses: {exc}; pass generation_config='vllm' (--generation-config vllm) to use "
                         "the engine's defaults") from exc
    if fields:
        logger.warning("Default sampling parameters have been overridden by the model's generation config: %s; "
                       "pass --generation-config vllm to use the engine's defaults", fields)
    return fields
