"""The `flash_attn` backend equals torch_ref (needs the flash-attn package, hence a CUDA GPU)."""
import pytest
import torch

pytest.importorskip("flash_attn")

from attention.backends.flash_attn import FlashAttnBackend  # noqa: E402
from attention_batches import assert_matches_reference, make_batch  # noqa: E402


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lens", [
    ([1, 19, 1, 6, 300], [40, 0, 517, 29, 21]),   # decodes, prefill, chunked prefills
    ([1, 1, 1], [1000, 3, 257]),                  # decode-only
])
def test_matches_reference(group, head_size, dtype, lens):
    batch = make_batch(*lens, num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=256,
                       dtype=dtype, device="cuda", num_pad_tokens=2, seed=group)
    assert_matches_reference(FlashAttnBackend, batch)


def test_capture_buffers_match_reference():
    batch = make_batch([1, 1], [700, 12], num_heads=8, num_kv_heads=2, head_size=128, block_size=256,
                       dtype=torch.bfloat16, device="cuda")
    assert_matches_reference(FlashAttnBackend, batch, capture=True)
