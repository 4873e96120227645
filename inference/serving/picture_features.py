"""Prompt embeddings with each picture's vision features, keeping the last few pictures' features.

The vision tower is most of a new picture's cost on a CPU (17 crops through CLIP at 16 crops). A prompt whose
leading KV-cache blocks were reused (:mod:`inference.serving.block_pool`) needs embeddings only from where its
computing starts, so a picture entirely inside the reused blocks is not read at all; a picture that reaches
past them (a second task on the same picture: its last block holds the new instruction) takes its features
from here when they were computed lately, by the picture's hash. At most :data:`PICTURES_KEPT` pictures'
features are kept (at 16 crops ~2,500 x 3,072 values each: ~15 MB in bf16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from inference.prepare import Prepared

PICTURES_KEPT = 4  # a compare's worth at the default MAX_IMAGES


class PictureFeatures:
    """The vision features of the last :data:`PICTURES_KEPT` pictures read, by picture hash (model thread)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self._kept: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.pictures_read = 0  # pictures through the vision tower, since start

    def clear(self) -> None:
        self._kept.clear()

    def prompt_embeds(self, prompt: Prepared, from_position: int = 0) -> torch.Tensor:
        """``prompt``'s embeddings ``[tokens, hidden]``, right from ``from_position`` on (the positions
        before it, already in the cache, hold placeholders where pictures lie)."""
        ids = prompt.input_ids.to(self.device)
        embeds = self.model.model.embed_text(ids)
        if prompt.pixel_values is None or prompt.image_sizes is None:
            return embeds
        spans = prompt.picture_spans
        if len(spans) != prompt.pixel_values.shape[0]:
            raise ValueError(
                f"The prompt has {len(spans)} pictures' tokens but {prompt.pixel_values.shape[0]} pictures; "
                "prompt and images do not belong together."
            )
        names: list[bytes | None] = list(prompt.picture_hashes) or [None] * len(spans)
        needed = [index for index, (_, end) in enumerate(spans) if end > from_position]
        missing = [index for index in needed if names[index] not in self._kept]
        features = self._features(
            prompt, missing, [spans[index][1] - spans[index][0] for index in missing], names
        )
        for index in needed:
            start, end = spans[index]
            name = names[index]
            if index in features:
                found = features[index]
            else:  # kept: read lately
                assert name is not None
                found = self._kept[name]
                self._kept.move_to_end(name)
            embeds[start:end] = found.to(embeds.dtype)
        return embeds

    def _features(
        self, prompt: Prepared, missing: list[int], lengths: list[int], names: list[bytes | None]
    ) -> dict[int, torch.Tensor]:
        """The vision tower on the pictures ``missing`` (all at once, ``lengths`` tokens each), each kept
        under its name."""
        if not missing:
            return {}
        assert prompt.pixel_values is not None and prompt.image_sizes is not None
        chosen = torch.tensor(missing)
        pixel_values = prompt.pixel_values[chosen].to(self.device, self.dtype)
        image_sizes = prompt.image_sizes[chosen].to(self.device)
        read = self.model.model.vision_embed_tokens(pixel_values, image_sizes)
        if read.shape[0] != sum(lengths):
            raise ValueError(
                f"The prompt has {sum(lengths)} image-token positions but the images produced "
                f"{read.shape[0]} feature vectors; prompt and images do not belong together."
            )
        self.pictures_read += len(missing)
        found = dict(zip(missing, read.split(lengths)))
        for index, features in found.items():
            name = names[index]
            if name is not None:
                self._kept[name] = features
                self._kept.move_to_end(name)
                while len(self._kept) > PICTURES_KEPT:
                    self._kept.popitem(last=False)
        return found
