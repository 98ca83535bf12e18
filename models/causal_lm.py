"""`DecoderForCausalLM`: decoder + LM head + Hugging Face weight loading; the model classes subclass it."""
from __future__ import annotations

from typing import ClassVar, Iterable

import torch
from torch import nn

from models.decoder import DecoderModel, DecoderSpec
from models.layers import ParallelLMHead

# (our fused parameter part, Hugging Face name part, shard id)
STACKED_PARAMS = (
    (".qkv_proj.", ".q_proj.", "q"),
    (".qkv_proj.", ".k_proj.", "k"),
    (".qkv_proj.", ".v_proj.", "v"),
    (".gate_up_proj.", ".gate_proj.", 0),
    (".gate_up_proj.", ".up_proj.", 1),
)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")   # rope tables, not weights


def _expected_shards(param_name: str) -> list:
    """The shard ids a parameter is loaded from: [None] unless it is a fused one."""
    shards = [shard_id for ours, _, shard_id in STACKED_PARAMS if ours in param_name]
    return shards or [None]


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
    if tuple(param.shape) != tuple(loaded_weight.shape):
        raise ValueError(f"checkpoint shape {tuple(loaded_weight.shape)} does not match parameter "
                         f"shape {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


class DecoderForCausalLM(nn.Module):
    """A decoder-only causal LM built as `Cls(hf_config)`; subclasses set `spec_for(hf_config)`."""

    architectures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hf_config) -> None:
        super().__init__()
        self.config = hf_config
        self.model = DecoderModel(hf_config, self.spec_for(hf_config))
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    @classmethod
    def spec_for(cls, hf_config) -> DecoderSpec:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [T] int64 (a flat batch) -> hidden [T, hidden_size] in the model dtype."""
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> logits [N, vocab_size] in the model dtype."""
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy Hugging Face-named tensors into the parameters; returns the parameter names loaded.

        q/k/v and gate/up are fused through their weight_loaders; rope tables (IGNORED_SUFFIXES) are skipped,
        and so is `lm_head.weight` with tied embeddings. Raises ValueError naming an unknown weight,
        a shape mismatch, or the parameters no tensor was given for.
        """
        params = dict(self.named_parameters())
        loaded: dict[str, set] = {}
        for hf_name, tensor in weights:
            if hf_name.endswith(IGNORED_SUFFIXES) or (self.tie_word_embeddings and hf_name == "lm_head.weight"):
                continue
            name, shard_id = self._param_name(hf_name)
            if name not in params:
                raise ValueError(f"unknown weight {hf_name!r} for {type(self).__name__}")
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            try:
                with torch.no_grad():
                    loader(param, tensor, shard_id) if shard_id is not None else loader(param, tensor)
            except ValueError as exc:
                raise ValueError(f"weight {hf_name!r}: {exc}") from exc
            loaded.setdefault(name, set()).add(shard_id)
        missing = [f"{name}{'' if shard is None else f' (shard {shard!r})'}" for name in params
                   for shard in _expected_shards(name) if shard not in loaded.get(name, ())]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"the checkpoint has no tensor for {len(missing)} parameter(s): {shown}")
        return set(loaded)

    @staticmethod
    def _param_name(hf_name: str) -> tuple[str, object]:
        for ours, theirs, shard_id in STACKED_PARAMS:
            if theirs in hf_name:
                return hf_name.replace(theirs, ours), shard_id
        return hf_name, None
