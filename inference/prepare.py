"""Requests turned into model inputs on the CPU: the prompt, the images' pixels, and a conversation
trimmed to fit the KV cache. Needs only the processor, so it runs on threads beside the model's."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.hd_canvas import CROP_SIZE
from inference.prompts import build_prompt, check_image_count, droppable_turns
from inference.types import EngineConfig, Request


@dataclass
class Prepared:
    """A request turned into model inputs (CPU tensors), ready to be prefilled."""

    input_ids: torch.Tensor  # [S]
    pixel_values: torch.Tensor | None  # [N, K, 3, 336, 336]; None for a prompt without images
    image_sizes: torch.Tensor | None  # [N, 2]
    max_new_tokens: int
    left_out: int = 0  # old exchanges of a conversation left out to fit the token budget
    picture_hashes: tuple[bytes, ...] = ()  # each picture's name as the model reads it (picture_hash)
    picture_spans: tuple[tuple[int, int], ...] = ()  # where each picture's tokens lie: (start, end)

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])


class Preparer:
    """Prompt building and image preprocessing for one processor, within ``token_budget`` KV-cache tokens."""

    def __init__(self, processor, config: EngineConfig, token_budget: int, block_tokens: int = 1) -> None:
        self.processor = processor
        self.config = config
        self.token_budget = token_budget
        self.block_tokens = block_tokens  # the cache is reserved in whole blocks

    def validate(self, request: Request) -> None:
        check_image_count(len(request.images), self.config.max_images, request.task)

    def max_new_tokens(self, request: Request) -> int:
        asked = request.max_new_tokens or self.config.max_new_tokens
        return max(1, min(asked, self.config.max_new_tokens))

    def prepare(self, request: Request) -> Prepared:
        """Turn a request into model inputs; a conversation too long for the budget loses old exchanges.

        The oldest follow-up exchanges go first (the first one, with the images, always stays); if
        even that does not fit, the scheduler refuses the request as too large.
        """
        self.validate(request)
        max_new_tokens = self.max_new_tokens(request)

        def prompt(left_out: int) -> str:
            return build_prompt(
                request.task,
                len(request.images),
                request.question,
                request.history,
                markdown=request.markdown,
                left_out=left_out,
                media=request.media,
                labels=request.labels,
                language=request.language,
            )

        left_out, text = 0, prompt(0)
        crops = {} if request.num_crops is None else {"num_crops": request.num_crops}
        inputs = self.processor(text=text, images=list(request.images), return_tensors="pt", **crops)
        total = int(inputs["input_ids"].shape[1])
        if not self._fits(total + max_new_tokens) and request.history:
            # The images add the same tokens whatever the text, so only the text is counted again.
            image_tokens = total - self._text_tokens(text)
            for left_out in range(1, droppable_turns(request.history) + 1):
                text = prompt(left_out)
                if self._fits(image_tokens + self._text_tokens(text) + max_new_tokens):
                    break
            inputs = self.processor(text=text, images=list(request.images), return_tensors="pt", **crops)
        return Prepared(
            input_ids=inputs["input_ids"][0],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            max_new_tokens=max_new_tokens,
            left_out=left_out,
            picture_hashes=picture_hashes(inputs["pixel_values"], inputs["image_sizes"]),
            picture_spans=tuple(
                picture_spans(inputs["input_ids"][0].tolist(), self.processor.image_token_id)
            ),
        )

    def _fits(self, tokens: int) -> bool:
        return -(-tokens // self.block_tokens) * self.block_tokens <= self.token_budget

    def _text_tokens(self, prompt: str) -> int:
        return len(self.processor.tokenizer(prompt)["input_ids"])


def picture_hash(tiles: torch.Tensor, image_size: torch.Tensor) -> bytes:
    """The name of one picture as the model reads it: its size and its tiles' pixels (``[tiles, 3, H, W]``,
    the crops included), so equal names mean equal vision features."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(array("q", [int(v) for v in image_size.tolist()]).tobytes())
    digest.update(tiles.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def picture_hashes(pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None) -> tuple[bytes, ...]:
    """:func:`picture_hash` of each picture's real tiles (the padding depends on the other pictures)."""
    if pixel_values is None or image_sizes is None:
        return ()
    names = []
    for tiles, size in zip(pixel_values, image_sizes):
        height, width = (int(v) for v in size.tolist())
        names.append(picture_hash(tiles[: (height // CROP_SIZE) * (width // CROP_SIZE) + 1], size))
    return tuple(names)


def picture_spans(input_ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """Where each picture's tokens lie: one ``(start, end)`` per run of the placeholder id, in order."""
    spans: list[tuple[int, int]] = []
    start = None
    for position, token in enumerate([*input_ids, None]):
        if token == image_token_id and start is None:
            start = position
        elif token != image_token_id and start is not None:
            spans.append((start, position))
            start = None
    return spans
