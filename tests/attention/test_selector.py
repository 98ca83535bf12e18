"""Choosing the attention backend: defaults, overrides and the errors that explain a refusal."""
import pytest
import torch

from attention.backends.flash_attn import FlashAttnBackend
from attention.selector import ENV_VAR, REGISTRY, select_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def no_env_choice(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_cpu_default_is_torch_ref():
    choice = select_backend(CPU, torch.float32, 64)
    assert choice.backend.name == "torch_ref"
    assert choice.block_size == 16


def test_env_var_names_the_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch_ref")
    assert select_backend(CUDA, torch.bfloat16, 128).backend.name == "torch_ref"
    monkeypatch.setenv(ENV_VAR, "flash_attn")
    with pytest.raises(ValueError, match="'flash_attn' cannot serve"):
        select_backend(CPU, torch.float32, 64)


def test_explicit_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "flash_attn")
    choice = select_backend(CUDA, torch.float16, 128, block_size=32, requested="triton")
    assert choice.backend.name == "triton"
    assert choice.block_size == 32


def test_unknown_name_lists_known_backends():
    with pytest.raises(ValueError) as err:
        select_backend(CPU, torch.float32, 64, requested="paged_magic")
    for name in REGISTRY:
        assert name in str(err.value)


def test_unfit_backend_gives_reasons_and_alternatives():
    with pytest.raises(ValueError) as err:
        select_backend(CPU, torch.float32, 64, requested="flash_attn")
    message = str(err.value)
    assert "does not run on cpu" in message
    assert "Backends that can: torch_ref" in message
    with pytest.raises(ValueError, match=r"block size 16 is not supported \(must be a multiple of 256\)"):
        select_backend(CUDA, torch.bfloat16, 128, block_size=16, requested="flash_attn")


def test_cuda_prefers_triton_and_falls_back_to_flash_attn(flash_attn_installed):
    choice = select_backend(CUDA, torch.bfloat16, 128, block_size=16)
    assert choice.backend.name == "triton" and choice.reason == "highest priority for cuda"
    assert select_backend(CUDA, torch.bfloat16, 128).block_size == 64   # triton's own default
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        return  # flash_attn is turned down on this GPU anyway
    choice = select_backend(CUDA, torch.bfloat16, 128, block_size=512)   # beyond triton's 256
    assert choice.backend.name == "flash_attn"
    assert "triton" in choice.reason and "block size 512" in choice.reason


def test_flash_attn_reasons():
    cpu_reasons = FlashAttnBackend.validate(CPU, torch.float32, 64, None)
    assert any("needs a CUDA device" in r for r in cpu_reasons)
    assert any("dtype float32" in r for r in cpu_reasons)
    assert any("head size 96" in r for r in FlashAttnBackend.validate(CUDA, torch.float16, 96, 256))
    assert any("dtype float32" in r for r in FlashAttnBackend.validate(CUDA, torch.float32, 128, 256))
    assert FlashAttnBackend.supports_block_size(512) and not FlashAttnBackend.supports_block_size(128)
    missing = [r for r in FlashAttnBackend.validate(CUDA, torch.float16, 128, 256) if "not installed" in r]
    try:
        import flash_attn  # noqa: F401
        assert not missing
    except ImportError:
        assert missing


FP8 = torch.float8_e4m3fn


@pytest.fixture
def flash_attn_installed(monkeypatch):
    """Make flash_attn's package check pass (its other rules still apply), so that on a machine
    without it the fp8 rule is the only thing that can turn it down."""
    from attention.backends import flash_attn as module
    real = module.importlib.util.find_spec
    monkeypatch.setattr(module.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))


def test_flash_attn_refuses_fp8_kv_cache():
    reasons = FlashAttnBackend.validate(CUDA, torch.bfloat16, 128, 256, FP8)
    assert any("KV cache dtype float8_e4m3fn is not supported (supported: the model dtype)" in r for r in reasons)
    for same in (None, torch.bfloat16):
        assert not any("KV cache" in r for r in FlashAttnBackend.validate(CUDA, torch.bfloat16, 128, 256, same))
    # the block-size rule still names flash-attn's multiple of 256 when both fail
    assert FlashAttnBackend.validate(CUDA, torch.bfloat16, 128, 16, FP8)[-1].endswith("(must be a multiple of 256)")


def test_triton_and_torch_ref_accept_fp8_kv_cache():
    from attention.backends.torch_ref import TorchRefBackend
    from attention.backends.triton_attn import TritonAttnBackend
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        assert any("compute capability >= 8.9" in r for r in TritonAttnBackend.validate(CUDA, torch.bfloat16, 128,
                                                                                        16, FP8))
    else:
        assert TritonAttnBackend.validate(CUDA, torch.bfloat16, 128, 16, FP8) == []
    assert TorchRefBackend.validate(CPU, torch.float32, 64, 16, FP8) == []
    assert select_backend(CPU, torch.float32, 64, kv_cache_dtype=FP8).backend.name == "torch_ref"


def test_auto_choice_skips_flash_attn_for_fp8_kv_cache(flash_attn_installed):
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("flash_attn is turned down on this GPU anyway")
    control = select_backend(CUDA, torch.bfloat16, 128, block_size=512)   # triton cannot: flash_attn
    assert control.backend.name == "flash_attn"
    choice = select_backend(CUDA, torch.bfloat16, 128, block_size=512, kv_cache_dtype=FP8)
    assert choice.backend.name != "flash_attn"
    assert "flash_attn: KV cache dtype float8_e4m3fn is not supported" in choice.reason


def test_explicit_flash_attn_with_fp8_names_the_backends_that_can(flash_attn_installed):
    with pytest.raises(ValueError) as err:
        select_backend(CUDA, torch.bfloat16, 128, requested="flash_attn", kv_cache_dtype=FP8)
    message = str(err.value)
    assert "'flash_attn' cannot serve this set-up: KV cache dtype float8_e4m3fn is not supported" in message
    assert message.endswith("Backends that can: triton, torch_ref")
