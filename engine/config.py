"""EngineConfig (what the user asks for) and ModelConfig (what the checkpoint says); both frozen."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.checks import check
from models.hf_overrides import HfOverrides, check_hf_overrides
from models.layers.rotary import derived_max_model_len
from scheduler.waiting_queue import SCHEDULING_POLICIES

_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16}
LOAD_FORMATS = ("auto", "safetensors", "dummy")
# KV-cache dtypes (vLLM's --kv-cache-dtype names): "auto" stores K/V in the model's dtype; "fp8" and
# "fp8_e4m3" store float8_e4m3fn with a per-tensor scale of 1.0 (what vLLM does when a checkpoint
# carries no KV scales): a plain cast, so K/V must stay within e4m3's range of +-448.
AUTO_MAX_MODEL_LEN = -1     # max_model_len -1 (vLLM's "auto"): the longest the model and the KV cache allow
KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings, validated at construction. Field names match vLLM's engine args.

    dtype "auto" takes the checkpoint's dtype on CUDA (bfloat16 if it says float32) and float32 on
    the CPU. async_scheduling overlaps the host's work for the next step with the GPU's current one.
    max_model_len None takes the model's length (derived from its config as vLLM does), -1 (vLLM's
    "auto") that or what the KV cache holds where less; more than the model's length is refused.
    block_size None takes what the chosen attention backend needs. num_kv_blocks None sizes
    the cache from gpu_memory_utilization on CUDA, or from cpu_kv_cache_gib on the CPU.
    kv_cache_dtype "auto" stores K/V in the model's dtype; "fp8" / "fp8_e4m3" in float8_e4m3fn
    (scale 1.0; half the bytes of bfloat16, so twice the blocks), which not every attention backend reads.
    generation_config "auto" takes the model's generation_config.json sampling fields as the requests'
    defaults, "vllm" keeps the engine's, a folder reads the file there (engine.generation_defaults).
    scheduling_policy "fcfs" serves requests in arrival order; "priority" by their priority (lower
    first, ties by arrival), as vLLM's --scheduling-policy (scheduler.waiting_queue). max_logprobs: the
    most `logprobs` / `prompt_logprobs` a request may ask for (vLLM's; 20, OpenAI's cap; -1: no cap).
    hf_overrides: fields of the checkpoint's config to change, e.g. a yarn rope for a longer context
    (vLLM's; models.hf_overrides). trust_remote_code: let transformers run config and tokenizer code
    shipped with the checkpoint (vLLM's; the architecture must still be one this engine implements).
    tensor_parallel_size: accepted for vLLM's scripts; only 1. tokenizer_revision: the hub revision of the
    tokenizer (`tokenizer`, else the model's hub id; vLLM's). download_dir: the hub cache the model and
    tokenizer are downloaded to and loaded from (None: Hugging Face's default; vLLM's).
    """

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    block_size: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    async_scheduling: bool = True
    attention_backend: str | None = None
    seed: int = 0
    load_format: str = "auto"
    max_queue_len: int | None = None
    revision: str | None = None
    kv_cache_dtype: str = "auto"
    generation_config: str = "auto"
    scheduling_policy: str = "fcfs"
    max_logprobs: int = 20
    hf_overrides: HfOverrides | None = None
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    tokenizer_revision: str | None = None
    download_dir: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.model), "model", self.model, "must name a preset, a local folder or a hub id")
        check(self.dtype == "auto" or self.dtype in _DTYPES, "dtype", self.dtype,
               f"must be 'auto' or one of {sorted(_DTYPES)}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device,
               "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check(self.block_size is None or self.block_size > 0, "block_size", self.block_size, "must be positive")
        check(self.max_model_len in (None, AUTO_MAX_MODEL_LEN) or self.max_model_len > 0, "max_model_len",
              self.max_model_len, "must be positive, or -1 for the longest the KV cache holds")
        check(self.max_num_seqs > 0, "max_num_seqs", self.max_num_seqs, "must be positive")
        check(self.max_num_batched_tokens is None or self.max_num_batched_tokens > 0, "max_num_batched_tokens",
               self.max_num_batched_tokens, "must be positive")
        check(self.num_kv_blocks is None or self.num_kv_blocks > 0, "num_kv_blocks", self.num_kv_blocks,
               "must be positive")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", self.gpu_memory_utilization,
               "must be in (0, 1]")
        check(self.cpu_kv_cache_gib > 0, "cpu_kv_cache_gib", self.cpu_kv_cache_gib, "must be positive")
        check(self.load_format in LOAD_FORMATS, "load_format", self.load_format, f"must be one of {LOAD_FORMATS}")
        check(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype", self.kv_cache_dtype,
               f"must be one of {tuple(KV_CACHE_DTYPES)}")
        check(isinstance(self.generation_config, str) and bool(self.generation_config.strip()), "generation_config",
              self.generation_config, "must be 'auto', 'vllm' or a folder holding generation_config.json")
        check(self.scheduling_policy in SCHEDULING_POLICIES, "scheduling_policy", self.scheduling_policy,
              f"must be one of {SCHEDULING_POLICIES}")
        check(self.max_queue_len is None or self.max_queue_len > 0, "max_queue_len", self.max_queue_len,
               "must be positive")
        check(self.max_logprobs >= -1, "max_logprobs", self.max_logprobs, "must be >= 0, or -1 for no cap")
        check_hf_overrides(self.hf_overrides)
        for name in ("tokenizer_revision", "download_dir"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and bool(value.strip())), name, value,
                  "must be a non-empty string, or None")
        check(self.tensor_parallel_size == 1, "tensor_parallel_size", self.tensor_parallel_size,
              "must be 1: this engine runs a model on one GPU")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, checkpoint_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if device.type == "cpu":
            return torch.float32
        if checkpoint_dtype in (torch.float16, torch.bfloat16):
            return checkpoint_dtype
        return torch.bfloat16

    def kv_cache_torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype the KV cache is stored in, given the model's (resolved) dtype."""
        return KV_CACHE_DTYPES[self.kv_cache_dtype] or model_dtype


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine needs, read from a Hugging Face config. derived_max_model_len:
    the longest context its positions cover (models.layers.rotary.derived_max_model_len)."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    derived_max_model_len: int
    eos_token_ids: tuple[int, ...]
    checkpoint_dtype: torch.dtype | None

    @classmethod
    def from_hf_config(cls, hf_config) -> "ModelConfig":
        archs = getattr(hf_config, "architectures", None) or []
        if not archs:
            raise ValueError("config.json names no architecture ('architectures' is empty)")
        num_heads = hf_config.num_attention_heads
        head_size = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        eos = getattr(hf_config, "eos_token_id", None)
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        dtype = getattr(hf_config, "dtype", None)
        if isinstance(dtype, str):
            dtype = _DTYPES.get(dtype)
        return cls(architecture=archs[0], num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
                   num_heads=num_heads, num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
                   head_size=head_size, vocab_size=hf_config.vocab_size,
                   derived_max_model_len=derived_max_model_len(hf_config),
                   eos_token_ids=eos_ids, checkpoint_dtype=dtype)


def checked_max_model_len(max_model_len: int | None, derived: int) -> int:
    """The engine's max_model_len: the one asked for, else the model's derived length. More than
    the model's positions cover is refused (as vLLM does unless told otherwise): those positions were
    never trained, and the rotary table ends at `derived`."""
    if max_model_len in (None, AUTO_MAX_MODEL_LEN):
        return derived          # auto: the model runner lowers it to what the KV cache holds
    if max_model_len > derived:
        raise ValueError(
            f"max_model_len={max_model_len} is more than this model's positions cover ({derived}: "
            f"max_position_embeddings, stretched by any rope scaling in its config); lower max_model_len, or, "
            f"where the model card says the model takes it, extend the context with rope scaling through "
            f"hf_overrides (--hf-overrides on the server), e.g. for Qwen3 {{'rope_parameters': {{'rope_type': "
            f"'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32768}}}}")
    return max_model_len
