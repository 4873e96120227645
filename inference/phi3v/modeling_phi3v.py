"""Phi-3-vision on transformers' own building blocks.

    pixel_values ──► CLIP vision tower (only the real tiles) ──► 2x2 merge ──► HD layout
                     with learned separators ──► MLP projector ──┐
    input_ids ──► embed_tokens ──► replace image-token rows ◄────┘ (masked_scatter)
              ──► transformers' Phi3 decoder (LongRoPE) ──► lm_head

Parameter names equal the published checkpoints', so no key renaming is needed
except what transformers already does for its nested ``CLIPVisionModel``
(it drops the ``vision_model.`` prefix).
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from transformers import CLIPVisionModel, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3PreTrainedModel, Phi3RotaryEmbedding

from inference.phi3v.configuration_phi3v import Phi3VConfig
from inference.phi3v.image_processing_phi3v import CROP_SIZE

# transformers 5.24 renamed the decoder's ``past_key_values`` argument (and output field) to ``cache``;
# earlier 5.x releases know only the old name. Our forward takes either and passes the one this
# release knows, so neither warns.
CACHE_ARG = "cache" if "cache" in inspect.signature(Phi3Model.forward).parameters else "past_key_values"

# CLIP tiles encoded per forward call: bounds activation memory when many images share a batch.
VISION_TILES_PER_CALL = 64


class Phi3VImageEmbedding(nn.Module):
    """Images -> one sequence of projected feature vectors per image, in the reference's layout."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        vision = config.vision_config
        num_layers = vision.num_hidden_layers
        layer = config.vision_feature_layer
        # hidden_states[k] is the output of the first k encoder layers (k = 0: the embeddings).
        self.layers_to_run = layer if layer >= 0 else num_layers + 1 + layer
        # CLIP is built with only the layers whose output is used, so its public forward returns exactly
        # that layer's output as ``last_hidden_state`` (CLIP's final layer norm only touches the pooled
        # output). The checkpoint's later layers are not loaded (see ``unused_vision_weights``).
        tower_config = copy.deepcopy(vision)
        tower_config.num_hidden_layers = self.layers_to_run
        self.img_processor = CLIPVisionModel(tower_config)
        self.unused_vision_weights = [
            rf"vision_embed_tokens\.img_processor\.(vision_model\.)?encoder\.layers\.{index}\."
            for index in range(self.layers_to_run, num_layers)
        ]
        width = vision.hidden_size * 4  # four patches merged into one vector
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, width))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.img_projection = nn.Sequential(
            nn.Linear(width, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.patch_grid = vision.image_size // vision.patch_size

    def encode_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """[T, 3, 336, 336] -> [T, grid/2, grid/2, 4C]: CLIP patch features, CLS dropped, merged 2x2."""
        patches = self.img_processor(pixel_values=tiles).last_hidden_state[:, 1:]
        count, _, channels = patches.shape
        g = self.patch_grid
        merged = (
            patches.reshape(count, g // 2, 2, g // 2, 2, channels)
            .permute(0, 1, 3, 2, 4, 5)  # (row block, col block, row in block, col in block)
            .reshape(count, g // 2, g // 2, 4 * channels)
        )
        return merged

    def _with_row_separators(self, grid: torch.Tensor) -> torch.Tensor:
        """[H, W, D] -> [H * (W + 1), D]: ``sub_GN`` appended at the end of every row."""
        rows = grid.shape[0]
        separator = self.sub_GN.reshape(1, 1, -1).to(grid.dtype).expand(rows, 1, -1)
        return torch.cat([grid, separator], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Return the projected features of all images, concatenated in image order: [tokens, hidden]."""
        sizes = [(int(h) // CROP_SIZE, int(w) // CROP_SIZE) for h, w in image_sizes.tolist()]
        max_tiles = pixel_values.shape[1]
        for rows, cols in sizes:
            if rows * cols + 1 > max_tiles:
                raise ValueError(
                    f"image_sizes ask for {rows * cols + 1} tiles but pixel_values hold {max_tiles}"
                )
        dtype = self.img_projection[0].weight.dtype
        # Encode only the real tiles of every image (the padding tiles would be wasted work).
        tiles = torch.cat([pixel_values[i, : r * c + 1] for i, (r, c) in enumerate(sizes)]).to(dtype)
        features = torch.cat([self.encode_tiles(chunk) for chunk in tiles.split(VISION_TILES_PER_CALL)])

        sequences, start = [], 0
        for rows, cols in sizes:
            global_grid = features[start]
            sub_tiles = features[start + 1 : start + 1 + rows * cols]
            start += 1 + rows * cols
            g = sub_tiles.shape[1]
            sub_grid = (
                sub_tiles.reshape(rows, cols, g, g, -1).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, -1)
            )
            sequences += [
                self._with_row_separators(sub_grid),
                self.glb_GN.reshape(1, -1).to(dtype),
                self._with_row_separators(global_grid),
            ]
        return self.img_projection(torch.cat(sequences))


class Phi3VRotaryEmbedding(Phi3RotaryEmbedding):
    """Phi-3's LongRoPE, which can be told to use the long factors whatever the positions of this pass.

    LongRoPE picks its factors from the largest position in a forward pass. A long prompt prefilled
    in pieces has early pieces whose positions are all below the switch, yet the prompt as a whole
    (and so the published model) uses the long factors for every token: ``force_long`` says so.
    """

    force_long = False

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        if not self.force_long or self.rope_type != "longrope":
            return super().forward(x, position_ids)
        switch = self.config.rope_parameters["original_max_position_embeddings"]
        marker = position_ids.new_full((*position_ids.shape[:-1], 1), switch)  # one position past it
        cos, sin = super().forward(x, torch.cat([position_ids, marker], dim=-1))
        return cos[..., :-1, :], sin[..., :-1, :]


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config_class = Phi3VConfig
    config: Phi3VConfig
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    input_modalities = ["image", "text"]


class Phi3VModel(Phi3Model):
    """transformers' Phi3 decoder plus the image embedding (``vision_embed_tokens``)."""

    config_class = Phi3VConfig
    config: Phi3VConfig

    @torch.no_grad()
    def _init_weights(self, module):
        # transformers initialises each nested PreTrainedModel's subtree with that model's method.
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            nn.init.normal_(module.glb_GN, std=self.config.initializer_range)
            nn.init.normal_(module.sub_GN, std=self.config.initializer_range)

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.rotary_emb = Phi3VRotaryEmbedding(config=config)
        self.post_init()

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Our processor writes the image token id; the reference writes negative ids. Accept both.
        return (input_ids == self.config.image_token_id) | (input_ids < 0)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings; image-token positions get a placeholder row (their features replace it)."""
        return self.embed_tokens(input_ids.clamp(0, self.config.vocab_size - 1))

    def embed_with_images(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None
    ) -> torch.Tensor:
        embeds = self.embed_text(input_ids)
        if pixel_values is None:
            return embeds
        if image_sizes is None:
            raise ValueError("pixel_values were given without image_sizes")
        features = self.vision_embed_tokens(pixel_values.to(embeds.device), image_sizes)
        mask = self.image_token_mask(input_ids)
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(
                f"The prompt has {int(mask.sum())} image-token positions but the images produced "
                f"{features.shape[0]} feature vectors; prompt and images do not belong together."
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values=None,  # the name before transformers 5.24
        long_rope: bool = False,  # LongRoPE's long factors even if every position here is below the switch
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_with_images(input_ids, pixel_values, image_sizes)
        kwargs[CACHE_ARG] = cache if cache is not None else past_key_values
        self.rotary_emb.force_long = long_rope
        try:
            return super().forward(
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        finally:
            self.rotary_emb.force_long = False


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3-vision with its language-model head; loads the published checkpoints as they are."""

    _tied_weights_keys = {}

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # The checkpoint's CLIP layers past the one whose output is used are skipped when loading.
        self._keys_to_ignore_on_load_unexpected = list(self.model.vision_embed_tokens.unused_vision_weights)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values=None,  # the name before transformers 5.24
        num_img_tokens: list[int] | None = None,  # processor bookkeeping; the spans are in input_ids
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        cache_out = {CACHE_ARG: getattr(outputs, CACHE_ARG)}
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), **cache_out)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        # Unlike transformers' Phi3ForCausalLM we never drop the cache at the LongRoPE switch:
        # the published model keeps the keys it already computed, and we match it.
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if inputs.get("pixel_values") is None:
            inputs.pop("image_sizes", None)
        return inputs


__all__ = ["Phi3VForCausalLM", "Phi3VImageEmbedding", "Phi3VModel", "Phi3VPreTrainedModel"]
