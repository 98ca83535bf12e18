"""When kernels launch with programmatic dependent launch (models/layers/ops/pdl.py)."""
import torch

from models.layers.ops import pdl


def test_pdl_needs_triton_3_4():
    assert pdl.triton_has_pdl("3.6.0") and pdl.triton_has_pdl("3.4.0+git1a2b3c") and pdl.triton_has_pdl("4.0")
    assert not pdl.triton_has_pdl("3.3.1") and not pdl.triton_has_pdl("2.3") and not pdl.triton_has_pdl(None)


def test_pdl_only_on_cuda_and_can_be_turned_off(monkeypatch):
    assert not pdl.pdl_enabled(torch.device("cpu"))
    assert pdl.pdl_kwargs(torch.zeros(1)) == {"USE_PDL": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pdl, "_cuda_device_has_pdl", lambda index: True)
    assert pdl.pdl_enabled(torch.device("cuda", 0))
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.pdl_enabled(torch.device("cuda", 0))
