"""Tiny random Hugging Face checkpoints, written by transformers at test time."""
import torch
import transformers

from models import presets
from models.tokenizer import byte_tokenizer

ARCHS = {"qwen3": presets.tiny_qwen3, "llama": presets.tiny_llama, "qwen2": presets.tiny_qwen2}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights large enough that logits are far from uniform (norm weights near 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.08 * noise)


def write_checkpoint(path, arch: str, seed: int = 0):
    config = ARCHS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    byte_tokenizer().save_pretrained(path)
    return model.eval()
