"""Architecture name (config.json `architectures`) -> model class."""
from __future__ import annotations

from torch import nn

from models.llama import LlamaForCausalLM
from models.qwen2 import Qwen2ForCausalLM
from models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_REGISTRY)


def get_model_class(architectures: str | list[str] | tuple[str, ...] | None) -> type[nn.Module]:
    """The class for the first supported name; ValueError listing the supported ones otherwise."""
    names = [architectures] if isinstance(architectures, str) else list(architectures or [])
    if not names:
        raise ValueError(f"config.json names no architecture ('architectures' is missing or empty); set it with "
                         f"hf_overrides, e.g. {{'architectures': ['Qwen3ForCausalLM']}}; supported: "
                         f"{', '.join(supported_architectures())}")
    for name in names:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ValueError(f"architectures {names} are not supported; supported: {', '.join(supported_architectures())}")
