"""The model beyond the golden cases: other tile counts, more layers, three images, LongRoPE, real size."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from inference import phi3v
from inference.phi3v.image_processing_phi3v import CROP_SIZE, num_image_tokens
from tests.inference.conftest import OFFICIAL, TINY_CHECKPOINT

HEAD_DIM = 16


def tiny_config(**overrides) -> phi3v.Phi3VConfig:
    settings = dict(
        vocab_size=32064,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=4096,
        original_max_position_embeddings=64,
        rope_scaling={
            "type": "su",
            "short_factor": [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)],
            "long_factor": [1.0 + 4.0 * i for i in range(HEAD_DIM // 2)],
        },
        sliding_window=4096,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 336,
            "patch_size": 14,
        },
        img_processor={"image_dim_out": 32, "num_img_tokens": 144},
        attn_implementation="eager",
    )
    settings.update(overrides)
    return phi3v.Phi3VConfig(**settings)


def random_model(config: phi3v.Phi3VConfig, seed: int = 0) -> phi3v.Phi3VForCausalLM:
    torch.manual_seed(seed)
    model = phi3v.Phi3VForCausalLM(config).eval()
    with torch.no_grad():  # separators start at zero; make them matter
        model.model.vision_embed_tokens.glb_GN.normal_()
        model.model.vision_embed_tokens.sub_GN.normal_()
    return model


def gradient_image(width: int, height: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def slow_image_features(embedding, pixel_values, image_sizes) -> torch.Tensor:
    """The image layout written out token by token, from the published description.

    Runs CLIP on every tile (padding included, as the reference does) through the public
    forward with all hidden states, then lays the merged patches out one vector at a time.
    """
    tower = embedding.img_processor
    layer = embedding.layers_to_run
    out = []
    for image, (height, width) in zip(pixel_values, image_sizes.tolist()):
        hidden = tower(image, output_hidden_states=True).hidden_states[layer][:, 1:]
        side = int(hidden.shape[1] ** 0.5)
        patches = hidden.reshape(hidden.shape[0], side, side, -1)

        def merged(tile: int, i: int, j: int, patches=patches) -> torch.Tensor:
            p = patches[tile]
            return torch.cat(
                [p[2 * i, 2 * j], p[2 * i, 2 * j + 1], p[2 * i + 1, 2 * j], p[2 * i + 1, 2 * j + 1]]
            )

        rows, cols, half = height // CROP_SIZE, width // CROP_SIZE, side // 2
        tokens = []
        for r in range(rows):
            for i in range(half):
                for c in range(cols):
                    for j in range(half):
                        tokens.append(merged(1 + r * cols + c, i, j))
                tokens.append(embedding.sub_GN.reshape(-1))
        tokens.append(embedding.glb_GN.reshape(-1))
        for i in range(half):
            for j in range(half):
                tokens.append(merged(0, i, j))
            tokens.append(embedding.sub_GN.reshape(-1))
        out.append(embedding.img_projection(torch.stack(tokens)))
    return torch.cat(out)


@pytest.mark.parametrize("num_crops", [4, 16])
def test_image_layout_matches_token_by_token_description(num_crops):
    model = random_model(tiny_config())
    processor = phi3v.Phi3VImageProcessor(num_crops=num_crops)
    images = [gradient_image(500, 300, 1), gradient_image(120, 700, 2), gradient_image(336, 336, 3)]
    batch = processor(images)
    with torch.no_grad():
        fast = model.model.vision_embed_tokens(batch["pixel_values"], batch["image_sizes"])
        slow = slow_image_features(
            model.model.vision_embed_tokens, batch["pixel_values"], batch["image_sizes"]
        )
    assert fast.shape == (sum(batch["num_img_tokens"]), 64)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    for h, w in batch["image_sizes"].tolist():
        assert (h // CROP_SIZE) * (w // CROP_SIZE) <= num_crops


def test_clip_sees_only_the_real_tiles():
    model = random_model(tiny_config())
    processor = phi3v.Phi3VImageProcessor(num_crops=16)
    batch = processor([gradient_image(300, 200, 4), gradient_image(40, 40, 5)])
    seen = []
    hook = model.model.vision_embed_tokens.img_processor.embeddings.register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape[0])
    )
    with torch.no_grad():
        model.model.vision_embed_tokens(batch["pixel_values"], batch["image_sizes"])
    hook.remove()
    real = sum((h // CROP_SIZE) * (w // CROP_SIZE) + 1 for h, w in batch["image_sizes"].tolist())
    assert sum(seen) == real < batch["pixel_values"].shape[0] * batch["pixel_values"].shape[1]


def test_three_images_fill_their_spans_in_order():
    model = random_model(tiny_config(), seed=1)
    processor = phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT)
    processor.image_processor.num_crops = 4
    images = [gradient_image(400, 300, 6), gradient_image(200, 600, 7), gradient_image(50, 50, 8)]
    prompt = "<|user|>\n<|image_1|>\n<|image_2|>\n<|image_3|>\nCompare.<|end|>\n<|assistant|>\n"
    inputs = processor(text=prompt, images=images)
    ids = inputs["input_ids"][0]
    is_image = ids == phi3v.IMAGE_TOKEN_ID
    # Each span is followed by <s>, as in the reference, and spans have the advertised lengths.
    starts = torch.nonzero(is_image[1:] & ~is_image[:-1]).flatten() + 1
    ends = torch.nonzero(is_image[:-1] & ~is_image[1:]).flatten() + 1
    assert [int(e - s) for s, e in zip(starts, ends)] == inputs["num_img_tokens"]
    assert all(int(ids[e]) == 1 for e in ends)
    with torch.no_grad():
        embeds = model.model.embed_with_images(ids[None], inputs["pixel_values"], inputs["image_sizes"])
        for k, (s, e) in enumerate(zip(starts, ends)):
            alone = model.model.vision_embed_tokens(
                inputs["pixel_values"][k : k + 1], inputs["image_sizes"][k : k + 1]
            )
            torch.testing.assert_close(embeds[0, s:e], alone, atol=1e-5, rtol=1e-5)
        logits = model(**{k: v for k, v in inputs.items() if k != "num_img_tokens"}).logits
    assert torch.isfinite(logits).all()


def test_prompt_and_images_that_do_not_belong_together_fail_clearly():
    model = random_model(tiny_config())
    processor = phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT)
    inputs = processor(
        text="<|user|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n", images=[gradient_image(50, 50, 9)]
    )
    short_ids = inputs["input_ids"][:, 10:]
    with pytest.raises(ValueError, match="image-token positions"):
        model(input_ids=short_ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])


def test_processor_rejects_mismatched_tags():
    processor = phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT)
    with pytest.raises(ValueError, match="2 image tag"):
        processor(text="<|image_1|><|image_2|>", images=[gradient_image(20, 20, 1)])
    with pytest.raises(ValueError, match="numbered"):
        processor(text="<|image_2|><|image_1|>", images=[gradient_image(20, 20, 1)] * 2)


# LongRoPE: the tiny config switches from short to long factors past 64 positions.


def _with_factors(config: phi3v.Phi3VConfig, factors: str) -> phi3v.Phi3VConfig:
    scaling = dict(config.rope_parameters)
    scaling["short_factor"] = scaling["long_factor"] = scaling[factors]
    return tiny_config(
        rope_scaling={"type": "su", **{k: scaling[k] for k in ("short_factor", "long_factor")}}
    )


@pytest.mark.parametrize(
    "length, factors", [(40, "short_factor"), (64, "short_factor"), (65, "long_factor"), (90, "long_factor")]
)
def test_prompt_pass_uses_the_factors_for_its_length(length, factors):
    config = tiny_config()
    model = random_model(config, seed=2)
    pinned = phi3v.Phi3VForCausalLM(_with_factors(config, factors)).eval()
    pinned.load_state_dict(model.state_dict())
    other = "long_factor" if factors == "short_factor" else "short_factor"
    wrong = phi3v.Phi3VForCausalLM(_with_factors(config, other)).eval()
    wrong.load_state_dict(model.state_dict())
    ids = torch.randint(3, 500, (1, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(logits, pinned(input_ids=ids).logits)
        assert not torch.allclose(logits[:, -1], wrong(input_ids=ids).logits[:, -1], atol=1e-3)


def test_generation_across_the_switch_keeps_the_cache():
    """Crossing the switch mid-answer: keys already cached stay as computed (as the published model does)."""
    from transformers import DynamicCache

    model = random_model(tiny_config(), seed=3)
    prompt = torch.randint(3, 500, (1, 60), generator=torch.Generator().manual_seed(3))
    steps = 10
    with torch.no_grad():
        generated = model.generate(
            input_ids=prompt,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            eos_token_id=[32000],
            pad_token_id=32000,
        )[:, prompt.shape[1] :]
        cache, ids, manual = DynamicCache(config=model.config), prompt, []
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits
        for step in range(steps):
            nxt = (
                logits[:, -1]
                .masked_fill(torch.arange(logits.shape[-1]) == 32000, -float("inf"))
                .argmax(-1, keepdim=True)
            )
            manual.append(int(nxt))
            position = torch.tensor([[prompt.shape[1] + step]])
            logits = model(input_ids=nxt, cache=cache, position_ids=position, use_cache=True).logits
    assert generated[0].tolist() == manual
    assert prompt.shape[1] + steps > model.config.original_max_position_embeddings


# The real published size, on the meta device (no memory, no weights).


def test_every_official_tensor_loads_into_a_parameter_of_the_real_size():
    index = json.loads((OFFICIAL / "model.safetensors.index.json").read_text())
    config = phi3v.Phi3VConfig.from_pretrained(OFFICIAL)
    with torch.device("meta"):
        model = phi3v.Phi3VForCausalLM(config)
    params = dict(model.named_parameters())
    # transformers drops the "vision_model." level of a nested CLIPVisionModel when loading.
    renamed = {
        name.replace(".img_processor.vision_model.", ".img_processor."): name for name in index["weight_map"]
    }
    assert len(renamed) == 592
    # CLIP's last layer is never used (the features come from the one before it), so it is not built and
    # its 16 tensors are skipped on load; every other tensor has its parameter.
    skipped = {name for name in renamed if ".img_processor.encoder.layers.23." in name}
    assert len(skipped) == 16
    assert set(renamed) - skipped == set(params)
    patterns = model._keys_to_ignore_on_load_unexpected
    assert all(any(re.search(p, name) for p in patterns) for name in skipped | {renamed[n] for n in skipped})
    assert not any(re.search(p, name) for p in patterns for name in params)
    one_clip_layer = sum(
        p.numel() for name, p in params.items() if ".img_processor.encoder.layers.0." in name
    )
    total = sum(p.numel() for p in params.values()) + one_clip_layer
    assert total * 2 == index["metadata"]["total_size"]  # bf16
    expected = {
        "model.embed_tokens.weight": (32064, 3072),
        "model.layers.0.self_attn.qkv_proj.weight": (9216, 3072),
        "model.layers.31.mlp.gate_up_proj.weight": (16384, 3072),
        "model.vision_embed_tokens.img_processor.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        "model.vision_embed_tokens.img_processor.embeddings.position_embedding.weight": (577, 1024),
        "model.vision_embed_tokens.img_processor.encoder.layers.22.mlp.fc1.weight": (4096, 1024),
        "model.vision_embed_tokens.glb_GN": (1, 1, 4096),
        "model.vision_embed_tokens.sub_GN": (1, 1, 1, 4096),
        "model.vision_embed_tokens.img_projection.0.weight": (3072, 4096),
        "model.vision_embed_tokens.img_projection.2.weight": (3072, 3072),
        "lm_head.weight": (32064, 3072),
    }
    for name, shape in expected.items():
        assert tuple(params[name].shape) == shape, name
    assert model.model.vision_embed_tokens.layers_to_run == 23  # CLIP's second-to-last layer


def test_official_config_reads_its_traps():
    config = phi3v.Phi3VConfig.from_pretrained(OFFICIAL)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert config.vision_config.hidden_size == 1024 and config.vision_config.num_hidden_layers == 24
    assert (
        config._attn_implementation != "flash_attention_2" or phi3v.configuration_phi3v.flash_attn_available()
    )
    assert num_image_tokens(1344, 1344) == 2509


def test_auto_classes_load_the_checkpoint_without_remote_code():
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

    assert isinstance(AutoConfig.from_pretrained(TINY_CHECKPOINT), phi3v.Phi3VConfig)
    model, info = AutoModelForCausalLM.from_pretrained(TINY_CHECKPOINT, output_loading_info=True)
    assert isinstance(model, phi3v.Phi3VForCausalLM)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(AutoProcessor.from_pretrained(TINY_CHECKPOINT), phi3v.Phi3VProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(OFFICIAL), phi3v.Phi3VImageProcessor)
