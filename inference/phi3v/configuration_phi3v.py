"""Configuration for Phi-3-vision (``model_type: phi3_v``).

The text side is transformers' own ``Phi3Config`` (LongRoPE "su" scaling is
mapped to "longrope" by it). The vision side is a ``CLIPVisionConfig``:
official checkpoints record no vision sizes and imply CLIP ViT-L/14 at 336 px,
so those are the defaults; a ``vision_config`` entry in config.json overrides
them (the tiny test checkpoint uses one).
"""

from __future__ import annotations

import importlib.util

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config
from transformers.configuration_utils import SubConfigSpec

# CLIP ViT-L/14-336, the tower every published Phi-3-vision checkpoint uses.
CLIP_VIT_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "projection_dim": 768,
}

DEFAULT_EMBD_LAYER = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

DEFAULT_IMG_PROCESSOR = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}

# The id of "<|image|>", which our processor writes at every image-feature position
# (the reference writes negative ids there instead; the model accepts both).
IMAGE_TOKEN_ID = 32044


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@strict
class Phi3VConfig(Phi3Config):
    model_type = "phi3_v"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=dict(CLIP_VIT_L14_336)),
    }

    vision_config: dict | CLIPVisionConfig | None = None
    embd_layer: dict | None = None
    img_processor: dict | None = None
    image_token_id: int = IMAGE_TOKEN_ID

    def __post_init__(self, **kwargs):
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        # Published configs pin flash_attention_2; without flash-attn that would fail to load,
        # so fall back to transformers' default (sdpa) instead.
        if kwargs.get("_attn_implementation") == "flash_attention_2" and not flash_attn_available():
            kwargs.pop("_attn_implementation")
        # Published configs call LongRoPE "su"; transformers 5.x only standardises it when it is
        # already named "longrope", so rename it before the parent class validates it.
        rope_scaling = kwargs.get("rope_scaling")
        if isinstance(rope_scaling, dict) and rope_scaling.get("type", rope_scaling.get("rope_type")) == "su":
            rope_scaling = {k: v for k, v in rope_scaling.items() if k != "type"}
            kwargs["rope_scaling"] = {**rope_scaling, "rope_type": "longrope"}
        if isinstance(kwargs.get("rope_scaling"), dict):
            # The published models scale by max / original max positions; say so explicitly.
            factor = self.max_position_embeddings / self.original_max_position_embeddings
            kwargs["rope_scaling"].setdefault("factor", factor)
        super().__post_init__(**kwargs)
        self._check_vision_settings()

    def _check_vision_settings(self) -> None:
        if self.embd_layer.get("hd_transform_order", "sub_glb") != "sub_glb":
            raise ValueError("Only hd_transform_order 'sub_glb' (the published layout) is supported.")
        if not self.embd_layer.get("use_hd_transform", True):
            raise ValueError("Only the HD transform (use_hd_transform: true) is supported.")
        if self.img_processor["image_dim_out"] != self.vision_config.hidden_size:
            raise ValueError(
                f"img_processor.image_dim_out ({self.img_processor['image_dim_out']}) must equal "
                f"the vision tower width ({self.vision_config.hidden_size})."
            )

    @property
    def vision_feature_layer(self) -> int:
        """Which CLIP hidden state feeds the projector (-2: the second-to-last layer)."""
        return int(self.img_processor.get("layer_idx", -2))


__all__ = ["CLIP_VIT_L14_336", "IMAGE_TOKEN_ID", "Phi3VConfig"]
