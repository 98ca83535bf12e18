"""The CPU side of CUDA graphs: capture sizes, padding a decode batch or a step with prefill tokens, and
that padded steps give the same output as unpadded ones (run eagerly here through a stand-in for the
graph runner)."""
import dataclasses

import pytest
import torch

from attention.backend import PAD_SLOT_ID, CommonAttentionMetadata, block_table_cols
from attention.forward_context import set_forward_context
from engine import LLM, SamplingParams
from engine.cuda_graph import (capture_sizes, padded_size, prefill_capture_sizes, prefill_graph_shape,
                               prefill_request_sizes)


def test_capture_sizes():
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert capture_sizes(44) == [1, 2, 4, 8, 16, 24, 32, 40, 44]


@pytest.mark.parametrize("num_tokens, block_size, want", [(1, 16, 16), (256, 16, 16), (257, 16, 32),
                                                           (4096, 64, 64), (4097, 64, 80), (40960, 16, 2560)])
def test_block_table_cols_are_a_multiple_of_16(num_tokens, block_size, want):
    """Enough blocks for num_tokens, rounded up to 16 columns (a row stride Triton specializes one way)."""
    assert block_table_cols(num_tokens, block_size) == want


@pytest.mark.parametrize("n, want", [(1, 1), (3, 4), (5, 8), (9, 16), (40, 40), (41, None)])
def test_padded_size(n, want):
    assert padded_size(capture_sizes(40), n) == want


def test_prefill_capture_sizes():
    assert prefill_capture_sizes(8192) == [16, 32, 64, 128, 256, 512]
    assert prefill_capture_sizes(100) == [16, 32, 64]
    assert prefill_capture_sizes(8) == []
    assert prefill_capture_sizes(512) == [16, 32, 64, 128, 256, 512]


def test_prefill_request_sizes():
    assert prefill_request_sizes(16, 256) == [1, 2, 4, 8, 16]
    assert prefill_request_sizes(512, 256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert prefill_request_sizes(512, 100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert prefill_request_sizes(64, 1) == [1]


@pytest.mark.parametrize("num_reqs, num_tokens, want", [
    (1, 2, (1, 16)), (1, 16, (1, 16)), (1, 17, (1, 32)), (1, 512, (1, 512)), (1, 513, None), (1, 1, None),
    (2, 20, (2, 32)), (3, 20, (4, 32)), (9, 16, (16, 16)), (130, 300, (256, 512)), (100, 140, (128, 256)),
    (8, 8, None), (200, 513, None)])
def test_prefill_graph_shape(num_reqs, num_tokens, want):
    """A step with prefill tokens (more tokens than requests) of at most 512 tokens takes the next
    token count and, under it, the next request count; a decode-only step or a longer one does not."""
    assert prefill_graph_shape(prefill_capture_sizes(8192), 256, num_reqs, num_tokens) == want
    assert prefill_graph_shape([], 256, 1, 20) is None
    assert prefill_graph_shape([16, 32], 6, 5, 20) == (6, 32)   # request counts stop at max_num_seqs


class EagerGraphs:
    """Runs padded decode batches and steps with prefill tokens eagerly with the same contract as
    CudaGraphRunner (can_run, prefill_shape, run)."""

    def __init__(self, runner, sizes, prefill_sizes=()):
        self.runner, self.sizes, self.prefill_sizes, self.seen = runner, sizes, list(prefill_sizes), []

    def can_run(self, num_reqs, decode_only):
        return decode_only and num_reqs <= self.sizes[-1]

    def prefill_shape(self, num_reqs, num_tokens):
        return prefill_graph_shape(self.prefill_sizes, self.sizes[-1], num_reqs, num_tokens)

    def run(self, input_ids, positions, common):
        # a snapshot: the step's tensors are views into buffers the next steps overwrite
        self.seen.append(dataclasses.replace(common, **{name: getattr(common, name).clone() for name in (
            "query_start_loc", "seq_lens", "block_table", "slot_mapping")}))
        if common.max_query_len == 1:
            assert common.num_reqs in self.sizes and common.num_tokens == common.num_reqs
        else:
            assert common.num_tokens in self.prefill_sizes
            assert common.num_reqs in prefill_request_sizes(common.num_tokens, self.sizes[-1])
        with set_forward_context(self.runner.builder.build(common)):
            return self.runner.model(input_ids, positions)


def test_padded_decode_steps_match_eager(qwen3_checkpoint):
    path, _ = qwen3_checkpoint
    prompts = [[5 + i, 7, 9 + 2 * i, 11][: 2 + i % 3] for i in range(5)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    plain = LLM(path, device="cpu", dtype="float32")
    want = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    padded = LLM(path, device="cpu", dtype="float32")
    runner = padded.engine.runner
    runner.graphs = EagerGraphs(runner, [1, 2, 4, 8])
    got = [o.outputs[0].token_ids for o in padded.generate(prompts, params, use_tqdm=False)]
    assert got == want
    seen = runner.graphs.seen
    assert seen and {c.num_reqs for c in seen} == {8}           # 5 live decodes padded to 8
    c = seen[0]
    slots = c.slot_mapping.numpy()
    assert (slots[5:] == PAD_SLOT_ID).all() and (slots[:5] >= 0).all()
    assert c.seq_lens.tolist()[5:] == [0, 0, 0]
    assert c.block_table.shape == (8, 16)   # short contexts: one block each, 16 columns (block_table_cols)
    assert c.query_start_loc.tolist() == list(range(9))


def test_padded_one_request_prefills_match_eager(qwen3_checkpoint):
    """Prompts sent one at a time (each prefill step a lone request, padded to 16 or 32 tokens; 40
    tokens exceed the largest size and run unpadded) give the unpadded engine's tokens."""
    path, _ = qwen3_checkpoint
    prompts = [[5, 7, 9], [11 + i for i in range(16)], [3 + i % 50 for i in range(20)], [8 + i for i in range(40)]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    plain = LLM(path, device="cpu", dtype="float32")
    want = [plain.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    padded = LLM(path, device="cpu", dtype="float32")
    runner = padded.engine.runner
    runner.graphs = EagerGraphs(runner, [1, 2, 4], prefill_sizes=[16, 32])
    got = [padded.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert got == want
    prefills = [c for c in runner.graphs.seen if c.max_query_len > 1]
    assert [(c.max_query_len, c.num_tokens) for c in prefills] == [(3, 16), (16, 16), (20, 32)]
    c = prefills[-1]
    assert c.query_start_loc.tolist() == [0, 20] and c.seq_lens.tolist() == [20]
    slots = c.slot_mapping.numpy()
    assert (slots[:20] >= 0).all() and (slots[20:] == PAD_SLOT_ID).all()


def test_padded_mixed_steps_match_eager(qwen3_checkpoint):
    """A 4-token step budget chunks the prompts, so most steps mix a prompt's chunk with decodes of
    the others; padded to prefill graph shapes (requests of no tokens, tokens with slot -1) they give
    the unpadded engine's tokens."""
    path, _ = qwen3_checkpoint
    prompts = [[5, 7, 9], [11 + i for i in range(9)], [3 + i % 50 for i in range(6)]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    kw = dict(device="cpu", dtype="float32", max_num_batched_tokens=4, max_num_seqs=4)
    want = [o.outputs[0].token_ids for o in LLM(path, **kw).generate(prompts, params, use_tqdm=False)]
    padded = LLM(path, **kw)
    runner = padded.engine.runner
    runner.graphs = EagerGraphs(runner, [1, 2, 4], prefill_sizes=[4])
    got = [o.outputs[0].token_ids for o in padded.generate(prompts, params, use_tqdm=False)]
    assert got == want
    mixed = [c for c in runner.graphs.seen if c.max_query_len > 1 and 1 in c.query_start_loc.diff().tolist()]
    assert mixed, "no step mixed a prefill chunk with decodes"
    padded_reqs = [c for c in runner.graphs.seen if c.max_query_len > 1 and c.seq_lens.tolist()[-1] == 0]
    assert padded_reqs, "no step padded its requests"
    c = padded_reqs[0]
    real = int((c.seq_lens > 0).sum())
    qsl = c.query_start_loc.tolist()
    assert qsl[real + 1:] == [qsl[real]] * (c.num_reqs - real)          # padded requests hold no tokens
    assert (c.slot_mapping[qsl[real]:] == PAD_SLOT_ID).all() and (c.slot_mapping[:qsl[real]] >= 0).all()


def test_synthetic_start_up_metadata(qwen3_checkpoint):
    """The batches the CUDA start-up runs use (profiling forward, graph capture), checked on the CPU."""
    llm = LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", block_size=16)
    runner = llm.engine.runner
    capture = runner._synthetic_metadata(3, 3, write=False)
    assert capture.query_start_loc.tolist() == [0, 1, 2, 3] and capture.seq_lens.tolist() == [1, 1, 1]
    assert capture.block_table.tolist() == [list(range(16))] * 3   # 16 columns (block_table_cols), block 0 read
    assert (capture.slot_mapping == PAD_SLOT_ID).all() and capture.max_query_len == 1
    prefill = runner._synthetic_metadata(4, 32, write=False)   # a prefill graph's: all tokens in the first
    assert prefill.query_start_loc.tolist() == [0, 32, 32, 32, 32] and prefill.seq_lens.tolist() == [32, 0, 0, 0]
    assert prefill.max_query_len == 32 and prefill.num_tokens == 32 and (prefill.slot_mapping == PAD_SLOT_ID).all()
    profile = runner._synthetic_metadata(1, 40, write=True)
    assert profile.query_start_loc.tolist() == [0, 40] and profile.max_seq_len == 40
    assert profile.block_table.tolist() == [list(range(16))] and profile.slot_mapping.tolist() == list(range(40))
    with set_forward_context(runner.builder.build(profile)), torch.inference_mode():
        hidden = runner.model(torch.arange(40) % 200, torch.arange(40))
    assert hidden.shape == (40, llm.engine.model_config.hidden_size) and torch.isfinite(hidden).all()


@pytest.mark.parametrize("backend, block_size", [("flash_attn", 256), ("triton", 64)])
def test_capture_buffers_take_any_step_table(backend, block_size):
    """Each graph-capable builder's fixed buffers hold a step's block table however few blocks
    max_model_len needs (1000 tokens: 4 blocks of 256, but 16 columns per block_table_cols)."""
    from attention.selector import load_backend

    builder = load_backend(backend).get_builder_cls()(8, 2, 64, block_size, 4, 1000, "cpu")
    num_reqs, cols = 3, block_table_cols(1000, block_size)
    lens = torch.full((num_reqs,), 5, dtype=torch.int32)
    qsl = torch.arange(num_reqs + 1, dtype=torch.int32)
    common = CommonAttentionMetadata(
        num_reqs=num_reqs, num_tokens=num_reqs, query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=lens,
        seq_lens_cpu=lens, max_query_len=1, max_seq_len=5, block_size=block_size,
        block_table=torch.arange(num_reqs * cols, dtype=torch.int32).view(num_reqs, cols),
        slot_mapping=torch.arange(num_reqs, dtype=torch.int64))
    metadata = builder.build_for_capture(common)
    assert torch.equal(metadata.block_table[:num_reqs, :cols], common.block_table)
