"""Speed of our Phi-3-vision engine, side by side with the reference's way of running it.

    python bench/engine.py --tiny            # the tiny test checkpoint; seconds on a CPU
    python bench/engine.py                   # real size (4.2B parameters, random weights); meant for a GPU

The real-size model is built from the published config values (tests/fixtures/phi3v-official) with
random weights, directly on the target device in the target dtype: nothing is downloaded and the
weights' values do not matter for speed. Progress goes to stderr; stdout gets exactly one JSON line.
See bench/RESULTS.md for what each figure means and the figures measured so far.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import BatchFeature, LogitsProcessor, LogitsProcessorList

from bench.reference_way import (
    REFERENCE_ATTENTION,
    reference_way,
    tiles_encoded_by_ours,
    tiles_encoded_by_reference,
)
from inference import phi3v
from inference.errors import InvalidRequest
from inference.loading import configure_attention_kernels, resolve_attention, resolve_device, resolve_dtype

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DIR = REPO_ROOT / "tests" / "fixtures" / "phi3v-official"
TINY_DIR = REPO_ROOT / "tests" / "fixtures" / "phi3v-tiny" / "checkpoint"

PROMPT = "<|user|>\n<|image_1|>\nDescribe this image.<|end|>\n<|assistant|>\n"
PREPROCESS_SIZES = [(336, 336), (1000, 600), (2000, 2000), (400, 1500)]  # (width, height)
PREFILL_IMAGE_SIZE = (1000, 600)
CROP_SETTINGS = (16, 4)  # 16: Phi-3-vision's published default; 4: what Phi-3.5-vision uses
DECODE_CROPS = 16  # decode speed is measured after the prompt built with this many crops
DEFAULT_REPEATS = 5
DEFAULT_DECODE_TOKENS = 64
WARMUP_DECODE_TOKENS = 4
IMAGE_SEED = 0
INIT_STD = 0.02  # used only if random init left a weight non-finite
MIB = 2**20

log = logging.getLogger("bench.engine")


# ----------------------------------------------------------------------------------------------------------
# Setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny test checkpoint instead of the real size"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", help="auto (default), bfloat16, float16 or float32")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per figure (median)")
    parser.add_argument(
        "--decode-tokens", type=int, default=DEFAULT_DECODE_TOKENS, help="new tokens generated per decode run"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.decode_tokens < 2:
        parser.error("--decode-tokens must be at least 2 (decode speed is measured between tokens)")
    return args


def synthetic_image(width: int, height: int, seed: int = IMAGE_SEED) -> Image.Image:
    """A deterministic photo-like image: smooth gradients plus noise, so resizing does real work. Another
    ``seed``, another picture: the benchmarks give each request its own, so that blocks kept from an earlier
    request with the same picture never make a figure look better than a stream of new pictures gets."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


_picture_seeds = itertools.count(IMAGE_SEED + 1)


def new_picture(width: int, height: int) -> Image.Image:
    """A :func:`synthetic_image` no request of this run had (a stream of members' posts, not one picture
    asked about again and again)."""
    return synthetic_image(width, height, seed=next(_picture_seeds))


def ensure_finite(model: torch.nn.Module) -> None:
    """Random init should be finite; re-draw any weight that is not, so no kernel sees NaN or inf."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter).all():
                log.warning("re-initialising non-finite weight %s", name)
                parameter.normal_(0.0, INIT_STD)


def build_model(
    tiny: bool, device: torch.device, dtype: torch.dtype, attention: str
) -> phi3v.Phi3VForCausalLM:
    if tiny:
        model = phi3v.Phi3VForCausalLM.from_pretrained(TINY_DIR, dtype=dtype, attn_implementation=attention)
        model.to(device)
    else:
        config = phi3v.Phi3VConfig.from_pretrained(OFFICIAL_DIR)
        # Built on the device in the target dtype: 4.2B parameters never materialise in float32 on the CPU.
        with torch.device(device):
            model = phi3v.Phi3VForCausalLM._from_config(config, dtype=dtype, attn_implementation=attention)
        ensure_finite(model)
    configure_attention_kernels(device)  # as inference.loading.load does
    return model.eval()


def load_processor(tiny: bool) -> phi3v.Phi3VProcessor:
    return phi3v.Phi3VProcessor.from_pretrained(TINY_DIR if tiny else OFFICIAL_DIR)


# ----------------------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_ms(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """One warm-up call, then the median wall time of ``repeats`` calls, in milliseconds."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class StepClock(LogitsProcessor):
    """Timestamps every generation step (generate calls logits processors once per new token)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores

    def tokens_per_second(self) -> float:
        """Tokens after the first one, divided by the time they took (prefill excluded)."""
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


class PeakMemory:
    """Peak memory so far: CUDA's max allocated bytes, or else the process's max resident set size."""

    def __init__(self, device: torch.device):
        self.device = device
        self.overall_mib = 0.0

    @property
    def kind(self) -> str:
        return "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_max_rss"

    def start_phase(self) -> None:
        if self.device.type == "cuda":
            self.end_phase()
            torch.cuda.reset_peak_memory_stats(self.device)

    def end_phase(self) -> float | None:
        """The peak since ``start_phase`` on CUDA (None elsewhere: max RSS cannot be reset)."""
        if self.device.type != "cuda":
            self.overall_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            return None
        phase_mib = torch.cuda.max_memory_allocated(self.device) / MIB
        self.overall_mib = max(self.overall_mib, phase_mib)
        return round(phase_mib, 1)


# ----------------------------------------------------------------------------------------------------------
# Benchmarks


def bench_preprocess(processor: phi3v.Phi3VProcessor, repeats: int) -> dict[str, dict[str, float]]:
    """ms per image for ``processor.image_processor`` at each size and crop setting (always on the CPU)."""
    images = {f"{w}x{h}": synthetic_image(w, h) for w, h in PREPROCESS_SIZES}
    results: dict[str, dict[str, float]] = {}
    for crops in CROP_SETTINGS:
        processor.image_processor.num_crops = crops
        results[f"crops{crops}"] = {
            name: preprocess_ms(processor.image_processor, image, repeats) for name, image in images.items()
        }
    return results


def preprocess_ms(image_processor: phi3v.Phi3VImageProcessor, image: Image.Image, repeats: int) -> float:
    return round(median_ms(lambda: image_processor([image]), repeats, torch.device("cpu")), 2)


def prompt_inputs(processor: phi3v.Phi3VProcessor, crops: int, device: torch.device) -> BatchFeature:
    """The 1-image prompt, holding only what the model takes (the processor may add bookkeeping keys)."""
    processor.image_processor.num_crops = crops
    encoded = processor(text=PROMPT, images=[synthetic_image(*PREFILL_IMAGE_SIZE)], return_tensors="pt")
    return BatchFeature({key: encoded[key] for key in processor.model_input_names}).to(device)


def prefill(model: phi3v.Phi3VForCausalLM, inputs: BatchFeature) -> torch.Tensor:
    """What generate's first step does: the whole prompt, cache filled, logits of the last position."""
    with torch.inference_mode():
        return model(**inputs, use_cache=True, logits_to_keep=1).logits


def bench_prefill(model, inputs: BatchFeature, repeats: int, device: torch.device) -> float:
    return round(median_ms(lambda: prefill(model, inputs), repeats, device), 2)


def generate(model, inputs: BatchFeature, new_tokens: int, pad_token_id: int, clock: StepClock) -> None:
    model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # random weights may pick an end token; this keeps the length fixed
        do_sample=False,
        pad_token_id=pad_token_id,
        logits_processor=LogitsProcessorList([clock]),
    )


def bench_decode(
    model, inputs: BatchFeature, new_tokens: int, repeats: int, pad_token_id: int, device: torch.device
) -> float:
    """Median tokens/s of greedy decoding at batch 1 after the prompt, through ``generate`` like the bot."""
    generate(model, inputs, WARMUP_DECODE_TOKENS, pad_token_id, StepClock(device))
    speeds = []
    for _ in range(repeats):
        clock = StepClock(device)
        generate(model, inputs, new_tokens, pad_token_id, clock)
        speeds.append(clock.tokens_per_second())
    return round(statistics.median(speeds), 2)


def bench_way(
    model,
    inputs_by_crops: dict[int, BatchFeature],
    args: argparse.Namespace,
    pad_token_id: int,
    device: torch.device,
    memory: PeakMemory,
) -> dict:
    """Prefill ms per crop setting, decode tokens/s and per-phase peak memory, run the current way."""
    prefill_ms, prefill_peak_mib = {}, {}
    for crops, inputs in inputs_by_crops.items():
        memory.start_phase()
        prefill_ms[f"crops{crops}"] = bench_prefill(model, inputs, args.repeats, device)
        prefill_peak_mib[f"crops{crops}"] = memory.end_phase()
    memory.start_phase()
    decode = bench_decode(
        model, inputs_by_crops[DECODE_CROPS], args.decode_tokens, args.repeats, pad_token_id, device
    )
    decode_peak_mib = memory.end_phase()
    return {
        "prefill_ms": prefill_ms,
        "decode_tok_s": decode,
        "peak_memory_mib": {"prefill": prefill_peak_mib, "decode": decode_peak_mib},
    }


def max_logit_difference(model, inputs: BatchFeature) -> float:
    """Ours vs the reference-way emulation on the same prompt: shows the emulation computes the same thing."""
    ours = prefill(model, inputs).float()
    with reference_way(model):
        theirs = prefill(model, inputs).float()
    return float((ours - theirs).abs().max())


# ----------------------------------------------------------------------------------------------------------
# Report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model_name = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model_name}, {cores} cores usable, {torch.get_num_threads()} torch threads"


def speedups(ours: dict, reference: dict) -> dict:
    prefill = {
        key: round(reference["prefill_ms"][key] / ours["prefill_ms"][key], 2) for key in ours["prefill_ms"]
    }
    return {"prefill": prefill, "decode": round(ours["decode_tok_s"] / reference["decode_tok_s"], 2)}


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention = resolve_attention("auto", device)
    memory = PeakMemory(device)
    log.info(
        "building the %s model on %s (%s, %s attention)",
        "tiny" if args.tiny else "real-size",
        device,
        str(dtype).removeprefix("torch."),
        attention,
    )
    model = build_model(args.tiny, device, dtype, attention)
    processor = load_processor(args.tiny)
    pad_token_id = processor.tokenizer.pad_token_id or 0

    log.info("preprocessing")
    preprocess_ms = bench_preprocess(processor, args.repeats)
    inputs_by_crops = {crops: prompt_inputs(processor, crops, device) for crops in CROP_SETTINGS}

    log.info("ours: %s attention, real tiles only", attention)
    ours = bench_way(model, inputs_by_crops, args, pad_token_id, device, memory)
    log.info("reference way: %s attention, all num_crops+1 tiles", REFERENCE_ATTENTION)
    with reference_way(model):
        reference = bench_way(model, inputs_by_crops, args, pad_token_id, device, memory)
    logit_difference = max_logit_difference(model, inputs_by_crops[DECODE_CROPS])
    memory.end_phase()

    width, height = PREFILL_IMAGE_SIZE
    return {
        "bench": "engine",
        "size": "tiny" if args.tiny else "real",
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "attention": {"ours": attention, "reference_way": REFERENCE_ATTENTION},
        "repeats": args.repeats,
        "preprocess_ms": preprocess_ms,
        "prefill_image": f"{width}x{height}",
        "prompt_tokens": {f"crops{c}": inputs.input_ids.shape[1] for c, inputs in inputs_by_crops.items()},
        "tiles_encoded": {
            "ours": {f"crops{c}": tiles_encoded_by_ours(i.image_sizes) for c, i in inputs_by_crops.items()},
            "reference_way": {
                f"crops{c}": tiles_encoded_by_reference(i.pixel_values) for c, i in inputs_by_crops.items()
            },
        },
        "prefill_ms": {"ours": ours["prefill_ms"], "reference_way": reference["prefill_ms"]},
        "decode_tok_s": {
            "ours": ours["decode_tok_s"],
            "reference_way": reference["decode_tok_s"],
            "new_tokens": args.decode_tokens,
            "after_prompt": f"crops{DECODE_CROPS}",
        },
        "speedup": speedups(ours, reference),
        "reference_way_max_logit_diff": round(logit_difference, 6),
        "peak_memory_mib": round(memory.overall_mib, 1),
        "peak_memory_kind": memory.kind,
        "phase_peak_memory_mib": (
            {"ours": ours["peak_memory_mib"], "reference_way": reference["peak_memory_mib"]}
            if device.type == "cuda"
            else None  # max RSS cannot be reset between phases
        ),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_benchmark(name: str, args, run_fn) -> None:
    """Shared entry point: logs to stderr, one JSON line to stdout, bad options said plainly."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    try:
        result = run_fn(args)
    except InvalidRequest as exc:  # a bad --device or --dtype
        sys.exit(f"bench/{name}: {exc}")
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    run_benchmark("engine.py", parse_args(argv), run)


if __name__ == "__main__":
    main()
