"""Our Phi-3-vision equals Microsoft's reference on every golden case of the tiny checkpoint.

Tolerances are the fixture's (tests/fixtures/phi3v-tiny/README.md): token ids,
image sizes and greedy tokens exact; pixels bit-identical (SHA-256 of the whole
tensor); embeddings 1e-4; logits atol 1e-3 / rtol 1e-4.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from inference.phi3v import IMAGE_TOKEN_ID
from tests.inference.conftest import TINY, case_images, tiny_manifest

MANIFEST = tiny_manifest()
CASES = {case["name"]: case for case in MANIFEST["cases"]}
LOGIT_COLUMNS = MANIFEST["logit_columns"]
STOP_IDS = MANIFEST["generation"]["eos_token_id"]
LOGIT_TOL = {"atol": 1e-3, "rtol": 1e-4}


def golden(case: dict) -> dict[str, np.ndarray]:
    return load_file(TINY / case["file"])


def run_processor(processor, case: dict):
    prompts = case["prompts"]
    images = case_images(case, MANIFEST) or None
    return processor(text=prompts if len(prompts) > 1 else prompts[0], images=images, return_tensors="pt")


@pytest.fixture(scope="module")
def outputs(tiny_model, tiny_processor):
    """Forward pass (and embeddings) for each case, computed once per case on first use."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            case = CASES[name]
            inputs = run_processor(tiny_processor, case)
            ref = golden(case)
            with torch.no_grad():
                forward_inputs = dict(inputs)  # the public API: model(**processor(...))
                if case["batch_size"] > 1:  # the reference's generate-style position ids for left padding
                    forward_inputs["position_ids"] = torch.from_numpy(ref["position_ids"])
                logits = tiny_model(**forward_inputs).logits
                embeds = tiny_model.model.embed_with_images(
                    inputs["input_ids"], inputs.get("pixel_values"), inputs.get("image_sizes")
                )
            cache[name] = {"inputs": inputs, "ref": ref, "logits": logits, "embeds": embeds}
        return cache[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_processor_matches_reference(name, tiny_processor):
    case = CASES[name]
    inputs = run_processor(tiny_processor, case)
    ref = golden(case)
    ids = inputs["input_ids"].numpy()
    # Image positions hold our image token id where the reference writes negative ids.
    assert ids.shape == ref["input_ids"].shape
    assert np.array_equal(ids == IMAGE_TOKEN_ID, ref["input_ids"] < 0)
    text_positions = ref["input_ids"] >= 0
    assert np.array_equal(ids[text_positions], ref["input_ids"][text_positions])
    assert np.array_equal(inputs["attention_mask"].numpy(), ref["attention_mask"])
    if case["images"]:
        assert inputs["image_sizes"].tolist() == case["image_sizes"]
        assert inputs["num_img_tokens"] == case["num_img_tokens"]
        pixels = inputs["pixel_values"].numpy()
        assert list(pixels.shape) == case["pixel_values_shape"]
        digest = hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f4").tobytes()).hexdigest()
        assert digest == case["pixel_values_sha256"]
        np.testing.assert_allclose(pixels[..., ::16, ::16], ref["pixel_values_sub16"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            pixels[..., 168:182, 168:182], ref["pixel_values_patch"], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", CASES)
def test_logits_match_reference(name, outputs):
    out = outputs(name)
    ref, logits = out["ref"], out["logits"]
    valid = torch.from_numpy(ref["attention_mask"]).bool()
    torch.testing.assert_close(logits[:, -1], torch.from_numpy(ref["logits_last"]), **LOGIT_TOL)
    torch.testing.assert_close(
        logits[..., LOGIT_COLUMNS][valid], torch.from_numpy(ref["logits_cols"])[valid], **LOGIT_TOL
    )
    lse = torch.logsumexp(logits.double(), dim=-1).float()
    torch.testing.assert_close(lse[valid], torch.from_numpy(ref["logits_lse"])[valid], **LOGIT_TOL)
    top2 = logits.topk(2, dim=-1).values
    decisive = valid & ((top2[..., 0] - top2[..., 1]) > 1e-3)
    assert torch.equal(logits.argmax(-1)[decisive], torch.from_numpy(ref["logits_argmax"])[decisive])


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c["images"]])
def test_image_embeddings_match_reference(name, outputs):
    out = outputs(name)
    ref, embeds, inputs = out["ref"], out["embeds"], out["inputs"]
    index = torch.from_numpy(ref["embeds_sel_index"])
    selected = embeds[index[:, 0], index[:, 1]]
    torch.testing.assert_close(selected, torch.from_numpy(ref["embeds_sel"]), atol=1e-4, rtol=1e-4)
    # Sum over each image's span, spans taken in sequence order (row-major over the batch).
    spans = (inputs["input_ids"] == IMAGE_TOKEN_ID).flatten()
    flat = embeds.reshape(-1, embeds.shape[-1])[spans].double()
    sums = torch.stack([chunk.sum(0) for chunk in flat.split(inputs["num_img_tokens"])])
    torch.testing.assert_close(sums, torch.from_numpy(ref["embeds_image_sum"]), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_matches_reference(name, tiny_model, tiny_processor):
    case = CASES[name]
    ref = golden(case)
    inputs = run_processor(tiny_processor, case)
    with torch.no_grad():
        result = tiny_model.generate(  # the public API: generate(**processor(...))
            **inputs,
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            eos_token_id=STOP_IDS,
            pad_token_id=MANIFEST["generation"]["pad_token_id"],
            output_scores=True,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_tokens = result.sequences[:, inputs["input_ids"].shape[1] :]
    assert new_tokens.tolist() == ref["gen_new_tokens"].tolist()
    raw = torch.stack(result.logits, dim=1)  # [B, 16, V], before min_new_tokens masking
    top5 = raw.topk(5, dim=-1)
    torch.testing.assert_close(top5.values, torch.from_numpy(ref["gen_top5_logits"]), **LOGIT_TOL)
