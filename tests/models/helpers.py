"""Test helpers: random HF checkpoints, KV caches and step metadata for running a model on torch_ref."""
from __future__ import annotations

import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from attention.backend import CommonAttentionMetadata
from attention.backends.torch_ref import TorchRefBackend, TorchRefImpl
from attention.forward_context import set_forward_context
from attention.layer import bind_attention_layers
from models.layers import get_rope
from models.presets import get_preset

BLOCK_SIZE = 4


def randomize_hf_model(hf_model: torch.nn.Module, seed: int = 0) -> None:
    """Give every HF parameter random values (norm weights near 1, biases non-zero) so a wrong copy shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)


class PagedRunner:
    """Runs an engine model over requests on the torch_ref backend with a shuffled block layout."""

    def __init__(self, model: torch.nn.Module, hf_config, num_reqs: int, max_len: int, seed: int = 0) -> None:
        head_size = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        self.blocks_per_req = -(-max_len // BLOCK_SIZE)
        num_blocks = num_reqs * self.blocks_per_req + 3
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num_blocks, generator=gen)[: num_reqs * self.blocks_per_req]
        param = next(model.parameters())
        dtype, self.device = param.dtype, param.device
        self.block_table_cpu = perm.view(num_reqs, self.blocks_per_req).to(torch.int32)
        self.block_table = self.block_table_cpu.to(self.device)
        shape = TorchRefBackend.get_kv_cache_shape(num_blocks, BLOCK_SIZE, hf_config.num_key_value_heads,
                                                   head_size)
        caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(hf_config.num_hidden_layers)]
        bind_attention_layers(model, TorchRefImpl, caches)
        self.model = model
        self.num_computed = [0] * num_reqs

    def step(self, chunks: list[list[int]]) -> torch.Tensor:
        """Feed chunks[r] (non-empty token ids) to request r as one flat batch; returns logits [T, V] float32."""
        ids, positions, slots, query_lens, seq_lens = [], [], [], [], []
        for r, chunk in enumerate(chunks):
            start = self.num_computed[r]
            for i, token in enumerate(chunk):
                pos = start + i
                ids.append(token)
                positions.append(pos)
                slots.append(int(self.block_table_cpu[r, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE)
            query_lens.append(len(chunk))
            seq_lens.append(start + len(chunk))
            self.num_computed[r] += len(chunk)
        qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
        seq = torch.tensor(seq_lens, dtype=torch.int32)
        dev = self.device
        meta = CommonAttentionMetadata(
            num_reqs=len(chunks), num_tokens=len(ids), query_start_loc=qsl.to(dev), query_start_loc_cpu=qsl,
            seq_lens=seq.to(dev), seq_lens_cpu=seq, max_query_len=max(query_lens), max_seq_len=max(seq_lens),
            block_table=self.block_table[: len(chunks)],
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev), block_size=BLOCK_SIZE)
        with torch.no_grad(), set_forward_context(meta):
            hidden = self.model(torch.tensor(ids, dtype=torch.int64, device=dev),
                                torch.tensor(positions, dtype=torch.int64, device=dev))
            return self.model.compute_logits(hidden)


def hf_logits(hf_model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    """Reference logits [len(prompt), V] float32 from transformers, one prompt at a time."""
    with torch.no_grad():
        return hf_model(torch.tensor([prompt])).logits[0].float()


def assert_rope_matches_transformers(config, max_position: int, num: int = 9, tol: float = 1e-5) -> None:
    """Our rope (get_rope) against transformers' LlamaRotaryEmbedding (any rope type it knows) on
    `num` random positions below `max_position`, for 2 query heads and 1 KV head."""
    head_size = config.head_dim
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, max_position, (num,), generator=gen)
    q, k = torch.randn(num, 2 * head_size, generator=gen), torch.randn(num, head_size, generator=gen)
    ours_q, ours_k = get_rope(config, head_size)(positions, q, k)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions[None])
    ref_q, ref_k = apply_rotary_pos_emb(q.view(1, num, 2, head_size).transpose(1, 2),
                                        k.view(1, num, 1, head_size).transpose(1, 2), cos, sin)
    torch.testing.assert_close(ours_q, ref_q.transpose(1, 2).reshape(num, -1), rtol=tol, atol=tol)
    torch.testing.assert_close(ours_k, ref_k.transpose(1, 2).reshape(num, -1), rtol=tol, atol=tol)


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def make_checkpoint(preset: str, folder, seed: int = 0, **save_kwargs):
    """Save a randomly initialised transformers model of `preset`'s shape; return it (eval mode)."""
    config = get_preset(preset)
    torch.manual_seed(seed)
    hf_model = getattr(transformers, config.architectures[0])(config).eval()
    randomize_hf_model(hf_model, seed)
    hf_model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    return hf_model
