"""The fused RMSNorm: transformers' own result bit for bit on the CPU, swapped in and out of a model whole,
and its start-up check, which refuses one that computes something else."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm

from inference.kernels import norms
from inference.kernels.checks import SelfCheckFailed
from inference.kernels.norms import FusedRMSNorm, check_fused_norm, use_fused_norms
from tests.inference.phi3v.test_modeling_phi3v import random_model, tiny_config

HIDDEN = 3072  # the real model's


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_the_fused_norm_is_transformers_norm_bit_for_bit_on_the_cpu(dtype, rows):
    generator = torch.Generator().manual_seed(rows)
    plain = Phi3RMSNorm(HIDDEN, eps=1e-5)
    with torch.no_grad():
        plain.weight.copy_(1 + 0.2 * torch.randn(HIDDEN, generator=generator))
    plain.to(dtype)
    fused = FusedRMSNorm(HIDDEN, eps=1e-5).to(dtype)
    fused.load_state_dict(plain.state_dict())
    hidden = (
        torch.randn(rows, HIDDEN, generator=generator) * torch.rand(rows, 1, generator=generator) * 40
    ).to(dtype)
    with torch.no_grad():
        assert torch.equal(fused(hidden), plain(hidden))


def test_every_norm_of_the_language_model_is_swapped_and_back_and_the_logits_stay_the_same():
    config = tiny_config()
    model = random_model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Phi3RMSNorm):
                module.weight.normal_(1.0, 0.3)
    ids = torch.randint(0, config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain_logits = model(input_ids=ids).logits
    names = {name for name, module in model.named_modules() if isinstance(module, Phi3RMSNorm)}
    parameters = dict(model.named_parameters())
    assert use_fused_norms(model, True) == 2 * config.num_hidden_layers + 1 == len(names)
    # Each norm is a new module holding the very same weight, under the same name (no class swapped).
    assert all(parameters[name] is parameter for name, parameter in model.named_parameters())
    assert len(dict(model.named_parameters())) == len(parameters)
    assert all(type(module) is FusedRMSNorm for name, module in model.named_modules() if name in names)
    assert any(
        isinstance(module, nn.LayerNorm) for module in model.modules()
    )  # the vision tower's: untouched
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain_logits)
    assert use_fused_norms(model, False) == len(names)
    assert all(type(module) is Phi3RMSNorm for name, module in model.named_modules() if name in names)


def test_the_check_passes_here():
    assert check_fused_norm(torch.device("cpu"), torch.bfloat16, HIDDEN, 1e-5) is None
    assert check_fused_norm(torch.device("cpu"), torch.float32, 64, 1e-6) is None


def test_the_check_refuses_a_norm_that_computes_something_else(monkeypatch):
    """Without its epsilon: rows of small activations come out wrong (the check's rows range in size)."""

    def no_epsilon(self, hidden):
        return self.weight * torch.nn.functional.rms_norm(hidden, self.weight.shape, eps=0.1)

    monkeypatch.setattr(norms.FusedRMSNorm, "forward", no_epsilon)
    problem = check_fused_norm(torch.device("cpu"), torch.float32, HIDDEN, 1e-5)
    assert problem is not None and "values differ from transformers' RMSNorm" in problem


def test_a_norm_that_breaks_the_device_ends_the_start(monkeypatch):
    def breaks(self, hidden):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(norms.FusedRMSNorm, "forward", breaks)
    with pytest.raises(SelfCheckFailed, match="The fused RMSNorm broke the GPU"):
        check_fused_norm(torch.device("cpu"), torch.float32, 64, 1e-6)


def test_a_norm_that_raises_is_refused_with_the_reason(monkeypatch):
    def raises(self, hidden):
        raise NotImplementedError("rms_norm: no kernel for this device")

    monkeypatch.setattr(norms.FusedRMSNorm, "forward", raises)
    assert check_fused_norm(torch.device("cpu"), torch.float32, 64, 1e-6) == (
        "NotImplementedError: rms_norm: no kernel for this device"
    )
    assert norms.NORM_ROWS[-1] >= 2048  # a prompt chunk's worth is among the rows checked
