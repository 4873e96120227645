"""Tokenizer + image processor: turns a chat prompt with image tags into model inputs.

The prompt names images with ``<|image_1|>``, ``<|image_2|>``...; the text between
tags is tokenised chunk by chunk (each chunk gets its own ``<s>``, as the
reference does), and every tag becomes ``num_img_tokens`` copies of one image
token id whose embedding rows the model later replaces with image features.
"""

from __future__ import annotations

import re

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from inference.phi3v.configuration_phi3v import IMAGE_TOKEN_ID
from inference.phi3v.image_processing_phi3v import Phi3VImageProcessor

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


class Phi3VProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "Phi3VImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = IMAGE_TOKEN_ID

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> Phi3VProcessor:
        kwargs.pop("trust_remote_code", None)
        image_kwargs = {k: kwargs.pop(k) for k in ("num_crops",) if kwargs.get(k) is not None}
        kwargs.pop("num_crops", None)
        image_processor = Phi3VImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        for key, value in image_kwargs.items():
            setattr(image_processor, key, int(value))
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, trust_remote_code=False, **kwargs
        )
        return cls(image_processor, tokenizer)

    def _tokenize_one(self, text: str, num_tokens_per_image: list[int], first_image: int) -> list[int]:
        tags = [int(n) for n in IMAGE_TAG.findall(text)]
        expected = list(range(1, len(tags) + 1))
        if tags != expected:
            raise ValueError(
                f"Image tags must be numbered <|image_1|> .. <|image_{len(tags)}|> in order; got {tags}"
            )
        chunks = IMAGE_TAG.split(text)[::2]  # split() also returns the captured numbers
        ids: list[int] = []
        for index, chunk in enumerate(chunks):
            ids.extend(self.tokenizer(chunk).input_ids)
            if index < len(tags):
                ids.extend([self.image_token_id] * num_tokens_per_image[first_image + index])
        return ids

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        return_tensors: str | None = "pt",
        padding_side: str = "left",
        **kwargs,
    ) -> BatchFeature:
        """Build ``input_ids``, ``attention_mask`` and (with images) ``pixel_values``, ``image_sizes``.

        ``text`` may be a list of prompts (a batch); images are taken in order, each prompt
        using as many as it has tags. Batches are padded on the left with the pad token. ``num_crops``
        reads the images at that many crops instead of the image processor's own.
        """
        if text is None:
            raise ValueError("text is required")
        texts = [text] if isinstance(text, str) else list(text)
        images = (
            [] if images is None else ([images] if not isinstance(images, list | tuple) else list(images))
        )
        tag_counts = [len(IMAGE_TAG.findall(t)) for t in texts]
        if sum(tag_counts) != len(images):
            raise ValueError(
                f"The prompt has {sum(tag_counts)} image tag(s) but {len(images)} image(s) were given"
            )

        data: dict = {}
        num_tokens: list[int] = []
        if images:
            pixels = self.image_processor(images, num_crops=kwargs.get("num_crops"))
            data["pixel_values"] = pixels["pixel_values"]
            data["image_sizes"] = pixels["image_sizes"]
            num_tokens = pixels["num_img_tokens"]
            data["num_img_tokens"] = num_tokens

        rows, first = [], 0
        for prompt, count in zip(texts, tag_counts):
            rows.append(self._tokenize_one(prompt, num_tokens, first))
            first += count
        longest = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(longest - len(row), longest) if padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        data["input_ids"] = input_ids
        data["attention_mask"] = attention_mask
        return BatchFeature(data=data, tensor_type=None)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]


__all__ = ["IMAGE_TAG", "Phi3VProcessor"]
