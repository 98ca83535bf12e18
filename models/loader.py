"""Finding a model (preset, local folder or hub id), its tokenizer, and building it with its weights."""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from models.hf_overrides import HfOverrides, apply_hf_overrides
from models.layers.norm import RMSNorm
from models.presets import get_preset, preset_names
from models.registry import get_model_class
from models.tokenizer import byte_tokenizer

logger = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"
CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"]
# A tokenizer folder holds at least one of these (the others only configure one of them).
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# A hub checkpoint without an index: its top-level *.safetensors (all that `safetensors_files` reads);
# fnmatch's `*` matches '/', so files in subfolders (other variants: original/, onnx/) are ignored explicitly.
ALL_SAFETENSORS = ["*.safetensors"]
IN_SUBFOLDERS = ["*/*"]
DUMMY_SEED = 0
DUMMY_RANGE = 1e-3


@dataclass(frozen=True)
class ResolvedModel:
    """hf_config: the transformers config; path: local folder with its files (None for presets);
    hub_id: the Hugging Face hub id it was fetched from (None for presets and local folders)."""

    hf_config: PretrainedConfig
    path: str | None
    is_preset: bool
    hub_id: str | None = None


def resolve_model(model: str, revision: str | None = None, load_format: str = "auto",
                  hf_overrides: HfOverrides | None = None, trust_remote_code: bool = False,
                  download_dir: str | None = None) -> ResolvedModel:
    """`preset:NAME`, a local folder with config.json, or a Hugging Face hub id (downloaded), its
    config changed by `hf_overrides` (models.hf_overrides) if given. trust_remote_code goes to
    transformers' AutoConfig (a config class shipped with the checkpoint; the architecture must still be
    one of models.registry's).

    The config is checked (`check_supported`) before anything else is read: for a hub id its config
    files are fetched first, then, if the engine can run it, tokenizer files and the safetensors index
    of the same commit, then the safetensors files the index names (without one, all top-level ones:
    `safetensors_files` reads no others; no weights with load_format="dummy"): a repository that also
    holds another copy of the weights, as Mistral's `consolidated.safetensors` or a subfolder's variant,
    is not downloaded twice. download_dir (vLLM's `--download-dir`): the hub cache to download to and
    load from (None: Hugging Face's default cache). Raises ValueError with what to pass instead on failure.
    """
    is_hub = not model.startswith(PRESET_PREFIX) and not os.path.isdir(model)
    if model.startswith(PRESET_PREFIX):
        config, path = get_preset(model[len(PRESET_PREFIX):]), None
    elif not is_hub:
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"model folder {model!r} has no config.json")
        path = os.path.abspath(model)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        path = _download(model, revision, CONFIG_FILES, download_dir)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = apply_hf_overrides(config, hf_overrides)
    check_supported(config)
    if is_hub:      # the snapshot folder is named by its commit: the rest comes from the same one
        commit, weights = os.path.basename(path), load_format != "dummy"
        path = _download(model, commit, TOKENIZER_FILES + ([SAFETENSORS_INDEX] if weights else []), download_dir)
        if weights:
            indexed = _indexed_files(path)
            _download(model, commit, indexed or ALL_SAFETENSORS, download_dir, None if indexed else IN_SUBFOLDERS)
    return ResolvedModel(config, path, path is None, model if is_hub else None)


def check_supported(hf_config: PretrainedConfig) -> None:
    """ValueError unless the engine runs this config: an architecture of models.registry whose own
    checks pass (e.g. no sliding-window attention), with unquantized weights."""
    model_cls = get_model_class(getattr(hf_config, "architectures", None))
    quant = getattr(hf_config, "quantization_config", None)
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        raise ValueError(f"quantized checkpoints are not supported (config.json has a quantization_config, "
                         f"quant_method {method!r}); use the model's unquantized (bfloat16 / float16) checkpoint")
    model_cls.spec_for(hf_config)


def _download(repo_id: str, revision: str | None, patterns: list[str], cache_dir: str | None = None,
              ignore: list[str] | None = None) -> str:
    """The local snapshot folder of `repo_id` at `revision` with the files matching `patterns` and none
    of `ignore` (huggingface_hub's allow_patterns / ignore_patterns), in the hub cache `cache_dir` (None:
    Hugging Face's default)."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns,
                                 ignore_patterns=ignore, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown repo, gated, bad id: all answered the same way
        raise ValueError(
            f"model {repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); pass a local folder with config.json, or a preset as "
            f"'preset:NAME' with NAME one of {', '.join(preset_names())}") from exc
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"hub model {repo_id!r} has no config.json")
    return path


def load_tokenizer(resolved: ResolvedModel, tokenizer: str | None = None, trust_remote_code: bool = False,
                   revision: str | None = None, download_dir: str | None = None):
    """The tokenizer: `tokenizer` if given (a folder or hub id), the built-in byte tokenizer for
    presets, else the checkpoint's own (AutoTokenizer). A folder without a vocabulary file is a
    ValueError: transformers would build an empty tokenizer from it (every text encoded to no tokens).
    revision (vLLM's `--tokenizer-revision`): the hub revision of `tokenizer`, or of the model's hub id
    where no tokenizer is given (a ValueError for a local folder or a preset); download_dir: the hub cache."""
    if revision is not None:
        return AutoTokenizer.from_pretrained(_hub_tokenizer(resolved, tokenizer, revision), revision=revision,
                                             cache_dir=download_dir, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        _check_tokenizer_folder(tokenizer, "tokenizer folder")
        return AutoTokenizer.from_pretrained(tokenizer, cache_dir=download_dir, trust_remote_code=trust_remote_code)
    if resolved.is_preset or resolved.path is None:
        return byte_tokenizer()
    _check_tokenizer_folder(resolved.path, "model folder")
    return AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)


def _hub_tokenizer(resolved: ResolvedModel, tokenizer: str | None, revision: str) -> str:
    """The hub id a tokenizer revision applies to; ValueError where the tokenizer is not on the hub."""
    source = tokenizer or resolved.hub_id or resolved.path
    if source is None or os.path.isdir(source):
        what = f"the local folder {source!r}" if source else "the preset's built-in byte tokenizer"
        raise ValueError(f"tokenizer_revision {revision!r} names a hub revision, but the tokenizer is {what}; drop "
                         "tokenizer_revision (--tokenizer-revision on the server) or name a hub tokenizer")
    return source


def _check_tokenizer_folder(path: str, what: str) -> None:
    """ValueError when `path` is a folder with none of TOKENIZER_VOCAB_FILES (a hub id passes)."""
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_VOCAB_FILES):
        raise ValueError(f"{what} {path!r} has no tokenizer (none of {', '.join(TOKENIZER_VOCAB_FILES)}); pass "
                         f"tokenizer= (--tokenizer on the server) naming a folder or hub id with the model's tokenizer")


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(hf_config: PretrainedConfig, path: str | None, load_format: str, dtype: torch.dtype,
                device: torch.device) -> nn.Module:
    """Build the model straight on `device` in `dtype`, load or dummy-fill its weights, eval mode.

    load_format: "auto" / "safetensors" read the checkpoint in `path`; "dummy" fills every parameter
    with small random values from a fixed seed (RMSNorm weights near 1).
    """
    model_cls = get_model_class(getattr(hf_config, "architectures", None))
    start = time.perf_counter()
    with _default_dtype(dtype), torch.device(device):
        model = model_cls(hf_config)
    if load_format == "dummy":
        init_dummy_weights(model, DUMMY_SEED)
        what = "dummy weights"
    elif load_format in ("auto", "safetensors"):
        if path is None:
            raise ValueError("a preset has no checkpoint: use load_format='dummy' with 'preset:' models")
        files = safetensors_files(path)
        model.load_weights(iterate_safetensors(files))
        what = f"{len(files)} safetensors file(s) from {path}"
    else:
        raise ValueError(f"load_format must be one of ('auto', 'safetensors', 'dummy'), got {load_format!r}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    num_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    logger.info("Loaded %s (%s, %.2f GiB, %s on %s) in %.1f s", model_cls.__name__, what, num_bytes / 2**30,
                str(dtype).removeprefix("torch."), device, time.perf_counter() - start)
    return model.eval()


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Every parameter uniform(-DUMMY_RANGE, DUMMY_RANGE); RMSNorm weights 1 + the same noise."""
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    generators: dict[torch.device, torch.Generator] = {}
    for param in model.parameters():
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        param.uniform_(-DUMMY_RANGE, DUMMY_RANGE, generator=gen)
        if id(param) in norm_weights:
            param.add_(1.0)


def _indexed_files(path: str) -> list[str]:
    """The file names model.safetensors.index.json in `path` maps tensors to, sorted; [] without one."""
    index = os.path.join(path, SAFETENSORS_INDEX)
    if not os.path.isfile(index):
        return []
    with open(index) as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def safetensors_files(path: str) -> list[str]:
    """The checkpoint's safetensors files: from model.safetensors.index.json if present, else all."""
    names = _indexed_files(path) or sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not names:
        raise ValueError(f"no .safetensors files in {path!r}; use load_format='dummy' to run without weights")
    missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
    if missing:     # an interrupted download or copy: say so before reading gigabytes of the others
        raise ValueError(f"{SAFETENSORS_INDEX} in {path!r} names {len(missing)} file(s) the folder lacks: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; download the checkpoint again")
    return [os.path.join(path, n) for n in names]


def iterate_safetensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) for every tensor, one at a time, so the whole checkpoint is never in memory."""
    from safetensors import safe_open

    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
