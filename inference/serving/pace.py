"""How fast this machine answers, measured at start-up on a CPU, so that limits and waits fit it.

A CPU is 10 to 100 times slower than a GPU and CPUs differ 10-fold among themselves, so no fixed request
limit or wait fits them all. Before serving, the runner times the real weights on small pieces of work
(:func:`measure`, a few seconds): one crop through the vision tower, one decoder layer reading a prompt
chunk, one decoder layer and ``lm_head`` answering one token; the whole model is that many layers. From the
:class:`Pace` come the start-up log's estimate, ``REQUEST_TIMEOUT_S=auto``, the crops a slow CPU uses by
default, and the wait people in line are told. Attention over long histories, the engine's own work and
other people's answers are not in it: it is a floor, which the engine corrects with what answers take.

``python -m bot --check`` cannot load the model; :func:`from_products` estimates the same figures from
matrix products at the published model's shapes in the chosen precision (a second or two).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from inference.loading import use_language_attention
from inference.serving.cache_size import PROMPT_TEXT_TOKENS, image_tokens
from inference.types import DEFAULT_REQUEST_TIMEOUT_S, TYPICAL_ANSWER_TOKENS

# A CPU on which a picture at the checkpoint's crops takes longer than this to its first words reads pictures
# at CPU_CROPS crops unless NUM_CROPS says otherwise: 4 crops make a third of 16's prompt (~750 of 2,500
# tokens).
SLOW_FIRST_TEXT_S = 30.0
CPU_CROPS = 4
TIMEOUT_FACTOR = 3  # REQUEST_TIMEOUT_S=auto on a CPU: this many times the longest answer's estimate
PROMPT_CHUNK_TOKENS = 512  # rows enough for the prompt path (8-bit switches at 192) and to spread its set-up
TILE = 336  # a crop's side in pixels


@dataclass(frozen=True)
class Pace:
    crop_s: float  # one 336x336 crop through the vision tower (an image at N crops runs N + 1)
    prompt_token_s: float  # one prompt token through the language model, read in chunks
    token_s: float  # one answering step for one person

    def first_text_s(self, num_crops: int) -> float:
        """A one-image question until its first words: the crops, then the prompt."""
        side = max(1, int(num_crops**0.5))
        crops = side * side + 1
        return crops * self.crop_s + (image_tokens(num_crops) + PROMPT_TEXT_TOKENS) * self.prompt_token_s

    def answer_s(self, num_crops: int, new_tokens: int) -> float:
        return self.first_text_s(num_crops) + new_tokens * self.token_s

    def request_timeout_s(self, num_crops: int, max_new_tokens: int) -> float:
        """``REQUEST_TIMEOUT_S=auto`` here: three times the longest answer as estimated (the estimate leaves
        out attention over a long history, measured to add ~50% at a full answer on two cores, and a person
        ahead may take as long again), and never less than where the model is fast."""
        return max(
            DEFAULT_REQUEST_TIMEOUT_S, float(round(TIMEOUT_FACTOR * self.answer_s(num_crops, max_new_tokens)))
        )

    def summary(self, num_crops: int, max_new_tokens: int) -> str:
        """For the log and --check: one image's first words, a typical and the longest answer."""
        typical = min(TYPICAL_ANSWER_TOKENS, max_new_tokens)
        return (
            f"one picture at {num_crops} crops: first words after ~{self.first_text_s(num_crops):.0f} s, "
            "then "
            f"{self.token_s:.2f} s a token ({1 / self.token_s:.1f} tokens/s); a {typical}-token answer "
            f"~{self.answer_s(num_crops, typical):.0f} s, the longest ({max_new_tokens} tokens) "
            f"~{self.answer_s(num_crops, max_new_tokens):.0f} s"
        )


def crops_for(pace: Pace, configured: int | None, checkpoint_crops: int) -> int:
    """The crops a CPU reads pictures at: ``NUM_CROPS`` when set, else the checkpoint's, or
    :data:`CPU_CROPS` where those would keep people waiting past :data:`SLOW_FIRST_TEXT_S`."""
    if configured is not None or checkpoint_crops <= CPU_CROPS:
        return configured or checkpoint_crops
    return CPU_CROPS if pace.first_text_s(checkpoint_crops) > SLOW_FIRST_TEXT_S else checkpoint_crops


def fewer_crops_text(pace: Pace, checkpoint_crops: int, crops: int) -> str:
    return (
        f"a picture at {checkpoint_crops} crops would take ~{pace.first_text_s(checkpoint_crops):.0f} s to "
        f"the first words, at {crops} ~{pace.first_text_s(crops):.0f} s (fewer crops see less detail, small "
        "print in screenshots above all; set NUM_CROPS to choose)"
    )


def _seconds(work: Callable[[], object], repeats: int = 3) -> float:
    """The median of ``repeats`` timings after one untimed run (which pays for first-call set-up)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def _plain_language_attention(model) -> Iterator[None]:
    """The language model attends with sdpa while a lone layer is timed (the runner's paged attention needs
    its cache), then goes back to what it had."""
    before = model.config._attn_implementation
    use_language_attention(model, "sdpa")
    try:
        yield
    finally:
        use_language_attention(model, before)


def measure(model, dtype: torch.dtype) -> Pace:
    """Time the loaded model's own weights on the CPU (see the module's docstring); a few seconds at real
    size."""
    language = model.model
    layers = len(language.layers)  # the prompt's layer is timed once and counted this many times
    width = model.config.hidden_size
    tower = language.vision_embed_tokens.img_processor
    with torch.inference_mode(), _plain_language_attention(model):

        def through(layer_list, tokens: int) -> Callable[[], object]:
            hidden = torch.randn(1, tokens, width, dtype=dtype)
            positions = torch.arange(tokens)[None]
            rotary = language.rotary_emb(hidden, positions)

            def run() -> torch.Tensor:
                state = hidden
                for layer in layer_list:
                    out = layer(state, position_ids=positions, position_embeddings=rotary)
                    state = out[0] if isinstance(out, tuple) else out
                return model.lm_head(state[:, -1:]) if tokens == 1 else state

            return run

        # A prompt chunk is bound by arithmetic: one layer, scaled. Answering a token is bound by reading the
        # weights from memory, which one layer read again and again (from the CPU's cache) understates: every
        # layer once, and lm_head, as a step does.
        prompt = through(language.layers[:1], PROMPT_CHUNK_TOKENS)
        prompt_token_s = _seconds(prompt, repeats=1) * layers / PROMPT_CHUNK_TOKENS
        token_s = _seconds(through(language.layers, 1), repeats=2)
        pixels = torch.zeros(1, 3, TILE, TILE, dtype=dtype)
        crop_s = _seconds(lambda: tower(pixel_values=pixels), repeats=1)
    return Pace(crop_s=crop_s, prompt_token_s=prompt_token_s, token_s=token_s)


# The published Phi-3-vision's sizes, for the estimate without the model: the language model's linear
# layers (3.62 billion weights; the largest product 3072 -> 16384), lm_head, and the CLIP ViT-L/14 tower
# (577 tokens a crop, 0.30 billion weights).
LANGUAGE_WEIGHTS = 3.62e9
LARGEST = (3072, 16384)
LM_HEAD_WEIGHTS = 3072 * 32064
TOWER_WEIGHTS = 0.30e9
TOWER_TOKENS = 577


def from_products(dtype: torch.dtype, *, int8: bool) -> Pace:
    """The :class:`Pace` of the published model in ``dtype`` (and an 8-bit language model if ``int8``), scaled
    from the language model's largest product timed at one row (reading the weights) and at a prompt chunk's
    rows (computing), about a second; attention and the rest are left out."""
    from inference.kernels.cpu_int8 import DequantScratch, Int8Linear

    def per_weight(rows: int, quantized: bool, shape: tuple[int, int] = LARGEST) -> float:
        """Seconds per weight and row of one product of ``rows`` rows."""
        fan_in, fan_out = shape
        linear = torch.nn.Linear(fan_in, fan_out, bias=False, device="meta")
        # Filled, not randomly initialised (that costs more than the product); values do not change speed.
        linear.weight = torch.nn.Parameter(
            torch.full((fan_out, fan_in), 0.01, dtype=dtype), requires_grad=False
        )
        layer = Int8Linear.rounding(linear, DequantScratch()) if quantized else linear
        x = torch.randn(rows, fan_in, dtype=dtype)
        return _seconds(lambda: layer(x), repeats=1) / (fan_in * fan_out * rows)

    with torch.inference_mode():
        token_s = per_weight(1, int8) * LANGUAGE_WEIGHTS + per_weight(1, False) * LM_HEAD_WEIGHTS
        prompt_token_s = per_weight(PROMPT_CHUNK_TOKENS, int8) * LANGUAGE_WEIGHTS
        crop_s = per_weight(TOWER_TOKENS, False, (1024, 4096)) * TOWER_WEIGHTS * TOWER_TOKENS
    return Pace(crop_s=crop_s, prompt_token_s=prompt_token_s, token_s=token_s)
