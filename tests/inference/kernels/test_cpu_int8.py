"""8-bit weights on the CPU: each layer close to its float original on both ways of multiplying, the loader
rounds exactly the language model's layers, and the runner answers with them (prompt and answering paths
both taken) close to float32."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
import torch
from PIL import Image

from inference import InvalidRequest
from inference.kernels.cpu_int8 import (
    WEIGHT_ALIGNMENT,
    DequantScratch,
    Int8Linear,
    keep_dense_weights,
    quantize,
    quantize_language_model,
)
from inference.kernels.cpu_products import ProductRules
from inference.loading import CpuInt8, load, resolve_choices
from inference.serving.startup import start_runner
from inference.types import EngineConfig, Request, Task
from tests.inference.conftest import TINY
from tests.inference.serving.test_runner import tiny

DEFAULTS = ProductRules()
KERNEL_MAX_ROWS, DENSE_KERNEL_MAX_ROWS = DEFAULTS.kernel_max_rows, DEFAULTS.dense_after_rows


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("rows", [1, 5, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1, 600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_int8_layer_multiplies_like_its_float_original(rows, dtype):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(256, 384, bias=True).to(dtype)
    quantized = Int8Linear.rounding(linear, DequantScratch())
    x = torch.randn(2, rows, 256, dtype=dtype)
    with torch.inference_mode():
        want, got = linear(x), quantized(x)
    assert got.shape == want.shape and got.dtype == dtype
    # int8 per row rounds each weight by at most half a step of max|w|/127; bf16 activations add ~0.4%.
    assert relative_error(got, want) < 0.02


def test_both_ways_of_multiplying_agree():
    torch.manual_seed(0)
    quantized = Int8Linear.rounding(torch.nn.Linear(128, 96, bias=False), DequantScratch())
    x = torch.randn(KERNEL_MAX_ROWS + 8, 128)
    with torch.inference_mode():
        together = quantized(x)  # past the kernel's rows: the weight expanded
        row_by_row = torch.cat([quantized(x[i : i + 8]) for i in range(0, x.shape[0], 8)])  # the int8 kernel
    assert relative_error(row_by_row, together) < 0.01  # only the kernel's bf16 activations differ


def test_a_dense_copy_multiplies_as_the_expanded_weight_bit_for_bit_and_answers_use_the_kernel():
    torch.manual_seed(1)
    layer = Int8Linear.rounding(torch.nn.Linear(128, 96, bias=True), DequantScratch())
    x = torch.randn(KERNEL_MAX_ROWS + 1, 128)  # past the kernel's rows: the weight expanded
    with torch.inference_mode():
        expanded, answering = layer(x), layer(x[:DENSE_KERNEL_MAX_ROWS])
        assert keep_dense_weights(torch.nn.Sequential(layer), 1 << 20, torch.float32) == (1, 1, 96 * 128 * 4)
        assert torch.equal(layer(x), expanded)  # the very numbers the expanded path multiplied by
        assert torch.equal(layer(x[:DENSE_KERNEL_MAX_ROWS]), answering)  # few rows: still the int8 kernel


def test_dense_copies_are_kept_in_order_while_they_fit():
    layers = torch.nn.Sequential(
        *(Int8Linear.rounding(torch.nn.Linear(64, 64, bias=False), DequantScratch()) for _ in range(4))
    )
    one = 64 * 64 * 2
    assert keep_dense_weights(layers, 2 * one + one // 2, torch.bfloat16) == (2, 4, 2 * one)
    assert [layer.dense is not None for layer in layers] == [True, True, False, False]
    assert layers[0].dense.dtype == torch.bfloat16


def test_an_all_zero_row_stays_zero_and_finite():
    linear = torch.nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight[3] = 0
    quantized = Int8Linear.rounding(linear, DequantScratch())
    y = quantized(torch.randn(4, 64))
    assert torch.isfinite(y).all() and (y[:, 3] == 0).all()


def test_the_language_models_layers_and_only_they_are_rounded(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    tower_before = {name: p.clone() for name, p in model.model.vision_embed_tokens.named_parameters()}
    replaced = quantize_language_model(model)
    assert replaced == 4 * len(model.model.layers)
    for layer in model.model.layers:
        for module in (
            layer.self_attn.qkv_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_up_proj,
            layer.mlp.down_proj,
        ):
            assert isinstance(module, Int8Linear) and module.weight_int8.dtype == torch.int8
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, Int8Linear)
    for name, parameter in model.model.vision_embed_tokens.named_parameters():
        assert torch.equal(parameter, tower_before[name]), name


def test_8bit_on_the_cpu_needs_no_extra_package_and_4bit_is_refused_with_the_way_out():
    assert isinstance(resolve_choices(tiny(quantization="8bit"))[3], CpuInt8)
    with pytest.raises(InvalidRequest, match="QUANTIZATION=8bit"):
        resolve_choices(tiny(quantization="4bit"))


def answer_with(
    config: EngineConfig, request: Request, tokens: int, started: Callable[[], None] = lambda: None
) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens (stop tokens off) and the first answer token's logits; ``started`` is called once the
    runner has started (its checks and measurements done)."""
    runner = start_runner(load(config), config)
    started()
    runner.stop_ids = set()
    rows: list[torch.Tensor] = []
    runner.loaded.model.lm_head.register_forward_hook(
        lambda _m, _i, out: rows.extend(out.reshape(-1, out.shape[-1]))
    )
    runner.step([(1, runner.prepare(request))], [])
    row = runner.rows[1]
    while runner.running_ids and len(row.decoder.ids) < tokens:
        runner.step([], [])
    return list(row.decoder.ids)[:tokens], rows[0]


@pytest.mark.parametrize("dense", [True, False], ids=["dense copies kept", "no room for dense copies"])
def test_the_runner_answers_in_8bit_close_to_float32(caplog, monkeypatch, dense):
    picture = Image.open(sorted((TINY / "images").glob("*.png"))[0]).convert("RGB")
    request = Request(Task.DESCRIBE, (picture,), max_new_tokens=6)
    want, want_logits = answer_with(tiny(), request, 6)

    calls = {"kernel": 0, "expanded": 0}
    expand, kernel = DequantScratch.expand, torch.ops.aten._weight_int8pack_mm

    def counting_expand(self, *args):
        calls["expanded"] += 1
        return expand(self, *args)

    def counting_kernel(*args):
        calls["kernel"] += 1
        return kernel(*args)

    monkeypatch.setattr(DequantScratch, "expand", counting_expand)
    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm", counting_kernel)
    if not dense:
        monkeypatch.setattr("inference.serving.startup.DENSE_RAM_SHARE", 0.0)
    # The rows at which the ways change stay the defaults here, so that both ways are taken whatever this CPU
    # measures at the tiny model's shapes (the measurement itself: test_cpu_products).
    monkeypatch.setattr("inference.kernels.cpu_int8.choose_products", lambda model, dtype: None)
    with caplog.at_level(logging.INFO, logger="inference"):
        got, got_logits = answer_with(
            tiny(quantization="8bit"), request, 6, started=lambda: calls.update(kernel=0, expanded=0)
        )
    assert "Language model in 8-bit: 8 linear layers" in caplog.text
    # The prompt (hundreds of tokens): the dense copies, or weights expanded; the answer: the int8 kernel.
    assert calls["kernel"] > 0 and (calls["expanded"] == 0) == dense
    said = "dense float32 copies kept for reading prompts" if dense else "dense copies kept for 0 of 8 layers"
    assert said in caplog.text
    assert torch.nn.functional.cosine_similarity(got_logits, want_logits, dim=0) > 0.999
    assert got[0] == want[0]


def rounded_layers(loaded) -> dict[str, torch.Tensor]:
    return {
        name: tensor.clone() for name, tensor in loaded.model.named_buffers() if name.endswith("weight_int8")
    }


def test_the_8bit_weights_are_kept_for_the_next_start_and_read_instead_of_rounded(
    monkeypatch, caplog, tmp_path
):
    from huggingface_hub import constants

    from inference.kernels import cpu_int8

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="inference.kernels.cpu_int8"):
        first = load(tiny(quantization="8bit"))
    kept = cpu_int8.cache_file(first.source)
    assert kept.is_file() and kept.is_relative_to(tmp_path) and f"8-bit weights kept in {kept}" in caplog.text

    def no_rounding(weight):
        raise AssertionError("rounded again although the weights were kept")

    monkeypatch.setattr(cpu_int8, "quantize", no_rounding)
    second = load(tiny(quantization="8bit"))
    assert rounded_layers(second).keys() == rounded_layers(first).keys()
    for name, tensor in rounded_layers(first).items():
        assert torch.equal(rounded_layers(second)[name], tensor), name
        # Read back from the file at any offset, kept where PyTorch's int8 kernel can read it (see below).
        assert rounded_layers(second)[name].data_ptr() % WEIGHT_ALIGNMENT == 0, name


def test_a_weight_at_an_unaligned_address_is_kept_aligned():
    """On a Xeon with AMX, PyTorch's int8 kernel crashed the process on a weight 24 bytes off alignment (as
    safetensors hands back what our cache file holds): the layer keeps its own aligned copy. (The product
    is not tried on the unaligned weight here: on such a CPU it kills the test run.)"""
    weight, scale = quantize(torch.randn(192, 64))
    buffer = torch.zeros(weight.numel() + 64, dtype=torch.int8)
    offset = next(i for i in range(1, 64) if (buffer.data_ptr() + i) % WEIGHT_ALIGNMENT)
    unaligned = buffer[offset : offset + weight.numel()].view(weight.shape)
    unaligned.copy_(weight)
    assert unaligned.data_ptr() % WEIGHT_ALIGNMENT
    layer = Int8Linear(unaligned, scale, None, DequantScratch())
    assert layer.weight_int8.data_ptr() % WEIGHT_ALIGNMENT == 0 and torch.equal(layer.weight_int8, weight)
    x = torch.randn(13, 64, dtype=torch.bfloat16)
    assert torch.equal(layer(x), Int8Linear(weight, scale, None, DequantScratch())(x))


def test_damaged_kept_weights_are_rounded_again_and_rewritten(monkeypatch, caplog, tmp_path):
    from huggingface_hub import constants

    from inference.kernels import cpu_int8

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    kept = cpu_int8.cache_file(TINY / "checkpoint")
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="inference.kernels.cpu_int8"):
        load(tiny(quantization="8bit"))
    assert "could not be read" in caplog.text and "rounding them again" in caplog.text
    assert kept.stat().st_size > 1000  # written anew, whole


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_start(monkeypatch, caplog, tmp_path):
    from huggingface_hub import constants

    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    monkeypatch.setattr(constants, "HF_HOME", str(blocked))
    with caplog.at_level(logging.WARNING, logger="inference.kernels.cpu_int8"):
        loaded = load(tiny(quantization="8bit"))
    assert "Could not keep the 8-bit weights" in caplog.text
    assert rounded_layers(loaded)


def test_a_changed_checkpoint_is_rounded_anew(tmp_path):
    import shutil

    from inference.kernels import cpu_int8

    copy = tmp_path / "checkpoint"
    shutil.copytree(TINY / "checkpoint", copy)
    before = cpu_int8.cache_file(copy)
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert cpu_int8.cache_file(copy) != before


def test_the_start_measures_the_ways_to_multiply_and_says_which_it_chose(caplog):
    config = tiny(quantization="8bit")
    with caplog.at_level(logging.INFO, logger="inference"):
        runner = start_runner(load(config), config)
    layers = [module for module in runner.loaded.model.modules() if isinstance(module, Int8Linear)]
    assert layers and all(layer.rules is layers[0].rules for layer in layers) and layers[0].rules.measured
    assert (
        "8-bit products on this CPU (measured, each checked against float32): layers with a dense"
        in caplog.text
    )
    assert "int8 kernel: 1 rows" in caplog.text and "torchao: not a candidate" in caplog.text
