"""The synchronous model runner. One thread owns it; nothing here is async.

``ModelRunner.run`` turns one request into text: prompt, preprocessing,
generation with the KV cache, streaming decoded text through a callback, and
stopping at the next decoding step once ``stop`` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from inference.errors import InvalidRequest, OutOfMemory
from inference.loading import LoadedModel
from inference.prompts import build_prompt
from inference.types import EngineConfig, Request, Result

# Phi-3 ends an answer with <|end|>; <|endoftext|> also stops it.
STOP_TOKENS = ("<|end|>", "<|endoftext|>")


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class IncrementalDecoder(BaseStreamer):
    """Receives token ids from ``generate`` and hands out the newly completed text."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the whole prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _flush(self, final: bool) -> None:
        text = self.text
        # A multi-byte character split over tokens decodes to U+FFFD until it is complete.
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.loaded = loaded
        self.config = config
        tokenizer = loaded.processor.tokenizer
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[-1]

    def validate(self, request: Request) -> None:
        if not request.images:
            raise InvalidRequest("Attach at least one image.")
        if len(request.images) > self.config.max_images:
            raise InvalidRequest(
                f"Too many images: {len(request.images)} (at most {self.config.max_images} per request)."
            )

    def max_new_tokens(self, request: Request) -> int:
        asked = request.max_new_tokens or self.config.max_new_tokens
        return max(1, min(asked, self.config.max_new_tokens))

    @torch.inference_mode()
    def run(self, request: Request, on_text: Callable[[str], None], stop: threading.Event) -> Result:
        self.validate(request)
        started = time.perf_counter()
        prompt = build_prompt(request.task, len(request.images), request.question)
        inputs = self.loaded.processor(text=prompt, images=list(request.images), return_tensors="pt")
        inputs.pop("num_img_tokens", None)
        inputs = {k: v.to(self.loaded.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        decoder = IncrementalDecoder(self.loaded.processor.tokenizer, on_text)
        try:
            self.loaded.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens(request),
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id,
                streamer=decoder,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
            )
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(
                "The GPU ran out of memory for this request. Try fewer or smaller images, or try again later."
            ) from exc
        return Result(text=decoder.text.strip(), new_tokens=len(decoder.ids), seconds=time.perf_counter() - started)
