"""Real-size Phi-3-vision on the CPU, precisions side by side in one run: what an owner without a GPU gets.

    python bench/cpu.py                               # float32, bf16 and 8-bit; JSON on stdout
    python bench/cpu.py --ways 8bit,float32 --crops 4 --tokens 24
    python bench/cpu.py --checkpoint /path/to/bf16-checkpoint   # reuse one built before

Random weights at the published shapes are saved once as a bf16 checkpoint (like the published one, ~8.3 GB)
in a temporary folder. Each way then runs in a fresh process, through the real loader and ``LocalEngine``
with stop tokens off (random weights would stop at random): load time (page cache warm: the checkpoint was
just written or read), the start's own speed measurement, the first piece of text for one 1344x1344 picture
at each ``--crops`` setting, a describe answer of ``--tokens`` tokens end to end at the smallest setting (per
token: after the first piece), the answering step for 4 people at once (short text prompts, then steps
timed), and peak RSS. The parent measures the memory bandwidth (reading a 2 GiB tensor) so each way's step
is set against the time its weights take to read. ``--matmul`` adds one 3072x16384 product per precision and
library (PyTorch, torchao if installed) at 1, 4 and 512 rows: the measurements behind the 8-bit choice.

bf16 is timed only where the CPU computes it natively (AMX or AVX-512 BF16) unless ``--ways`` names it: it
is emulated elsewhere and many times slower. Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import torch

from bench.engine import OFFICIAL_DIR, new_picture
from bench.serving import versions

WAYS = {"float32": ("float32", "none"), "bf16": ("bfloat16", "none"), "8bit": ("auto", "8bit")}
IMAGE_SIDE = 1344  # fills 16 crops (4x4 tiles of 336)
GIB = 1024**3


def say(text: str) -> None:
    print(f"[cpu] {text}", file=sys.stderr, flush=True)


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return None


def significant(seconds: float) -> float:
    """Four significant figures: a tiny checkpoint's sub-millisecond steps must not round to zero."""
    return float(f"{seconds:.4g}")


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
    return [flag for flag in (cpuinfo("flags") or "").split() if flag in wanted]


def cpu_name() -> str:
    return cpuinfo("model name") or "unknown"


def build_checkpoint(folder: Path) -> None:
    """Random weights at the published shapes, saved in bf16 with the published tokenizer and processor."""
    from inference import phi3v

    config = phi3v.Phi3VConfig.from_pretrained(OFFICIAL_DIR)
    model = phi3v.Phi3VForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    for path in OFFICIAL_DIR.iterdir():
        if path.name != "model.safetensors.index.json" and not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)


def memory_bandwidth() -> float:
    """Bytes per second this process reads from memory: the sum of a 2 GiB tensor, best of three."""
    data = torch.ones(GIB // 2, dtype=torch.float32)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


class ModelTime:
    """Seconds spent inside the vision tower and inside the model's forward passes (language model and
    lm_head), from module hooks: what a request costs beyond them is the serving path's own."""

    def __init__(self, model) -> None:
        self.seconds = {"vision": 0.0, "language": 0.0}
        self._started: dict[str, float] = {}
        for name, module in (("vision", model.model.vision_embed_tokens), ("language", model)):
            module.register_forward_pre_hook(
                lambda _m, _a, name=name: self._started.__setitem__(name, time.perf_counter())
            )
            module.register_forward_hook(lambda _m, _a, _o, name=name: self._add(name))

    def _add(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._started.pop(name)

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {"vision": 0.0, "language": 0.0}
        return taken


def language_weight_bytes(model) -> int:
    """What one answering step reads: the language model's layers and lm_head (the embedding is a lookup)."""
    layers = sum(t.numel() * t.element_size() for t in model.model.layers.parameters())
    layers += sum(t.numel() * t.element_size() for t in model.model.layers.buffers())
    return layers + sum(t.numel() * t.element_size() for t in model.lm_head.parameters())


async def one_way(args: argparse.Namespace) -> dict:
    """In a process of its own: load one way, time it through the engine, report."""
    from inference.loading import load
    from inference.prepare import Prepared
    from inference.serving.engine import LocalEngine
    from inference.serving.runner import ModelRunner
    from inference.serving.startup import start_runner
    from inference.types import EngineConfig, Request, Task

    dtype, quantization = WAYS[args.one]
    crops = sorted(args.crops, reverse=True)
    config = EngineConfig(
        model_id=str(args.checkpoint),
        device="cpu",
        dtype=dtype,
        quantization=quantization,
        num_crops=crops[0],
        max_new_tokens=max(args.tokens, 8),
        request_timeout_s=24 * 3600.0,
        max_batch_size=4,
    )
    result: dict = {"way": args.one}
    start = time.perf_counter()
    loaded = load(config)
    result["load_s"] = round(time.perf_counter() - start, 2)
    result["precision"] = str(loaded.dtype).removeprefix("torch.")
    say(f"{args.one}: loaded in {result['load_s']} s")

    def factory(engine_config: EngineConfig) -> ModelRunner:
        runner = start_runner(loaded, engine_config)
        runner.stop_ids = set()  # every answer as long as asked
        return runner

    model_time = ModelTime(loaded.model)
    engine = LocalEngine(config, runner_factory=factory)
    start = time.perf_counter()
    await engine.start()
    model_time.take()  # the start's own measurements
    result["start_s"] = round(time.perf_counter() - start, 2)
    runner = engine._runner
    pace = runner.pace
    result["start_estimate"] = {f"first_text_s_{n}_crops": round(pace.first_text_s(n), 1) for n in crops} | {
        "token_s": round(pace.token_s, 3)
    }
    image_processor = loaded.processor.image_processor

    async def answer(new_tokens: int) -> tuple[float, float, int]:
        """Seconds to the first piece and to the end, and the tokens the engine counted."""
        before = engine.stats().tokens_generated
        started = time.perf_counter()
        first = None
        request = Request(Task.DESCRIBE, (new_picture(IMAGE_SIDE, IMAGE_SIDE),), max_new_tokens=new_tokens)
        async for _piece in engine.stream(request):
            first = first or time.perf_counter() - started
        return first, time.perf_counter() - started, engine.stats().tokens_generated - before

    for n in crops:
        image_processor.num_crops = n  # bench only: the processor is the engine's, set between requests
        tokens = args.tokens if n == crops[-1] else 2
        model_time.take()
        first, total, made = await answer(tokens)
        inside = model_time.take()
        result[f"first_text_s_{n}_crops"] = round(first, 1)
        result[f"where_the_time_went_{n}_crops"] = {
            "whole_request_s": round(total, 2),
            "vision_tower_s": round(inside["vision"], 2),
            "language_model_s": round(inside["language"], 2),
            "serving_path_s": round(total - inside["vision"] - inside["language"], 2),
        }
        say(f"{args.one}: {n} crops: first text {first:.1f} s")
        if n == crops[-1]:
            result[f"answer_{made}_tokens_s_{n}_crops"] = round(total, 1)
            result["token_s_one_person"] = significant((total - first) / max(made - 1, 1))
            say(f"{args.one}: {made} tokens in {total:.1f} s")

    # Four people answering at once: short text prompts, then the steps timed.
    for request_id in range(1, 5):
        ids = loaded.processor.tokenizer(
            f"<|user|>\nTell me a story, number {request_id}.<|end|>\n<|assistant|>\n"
        )
        prepared = Prepared(torch.tensor(ids["input_ids"]), None, None, max_new_tokens=64)
        runner.step([(100 + request_id, prepared)], [])
    steps = 6
    start = time.perf_counter()
    for _ in range(steps):
        runner.step([], [])
    result["token_s_four_people"] = significant((time.perf_counter() - start) / steps)
    for request_id in range(1, 5):
        runner.step([], [100 + request_id])
    await engine.stop()
    result["weights_read_per_token_gib"] = round(language_weight_bytes(loaded.model) / GIB, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)
    return result


async def longest_answer(args: argparse.Namespace) -> dict:
    """In a process of its own: every setting at its default (QUANTIZATION, DTYPE, NUM_CROPS and
    REQUEST_TIMEOUT_S auto), one describe answer as long as the engine allows; does it finish in time, and
    what wait would the next person be told?"""
    from inference.errors import RequestTimedOut
    from inference.serving.engine import LocalEngine
    from inference.serving.runner import ModelRunner
    from inference.serving.startup import start_runner
    from inference.types import EngineConfig, Request, Task

    def factory(engine_config: EngineConfig) -> ModelRunner:
        from inference.loading import load

        runner = start_runner(load(engine_config), engine_config)
        runner.stop_ids = set()  # as long as allowed
        return runner

    config = EngineConfig(model_id=str(args.checkpoint))
    engine = LocalEngine(config, runner_factory=factory)
    await engine.start()
    runner = engine._runner
    result = {
        "settings": "defaults",
        "num_crops": runner.num_crops,
        "max_new_tokens": config.max_new_tokens,
        "request_timeout_s": engine.request_timeout_s,
        "start_estimate_s": round(runner.pace.answer_s(runner.num_crops, config.max_new_tokens), 1),
        "told_before_any_answer_s": round(engine.wait_s(1), 1),
    }
    started, first = time.perf_counter(), None
    try:
        async for _piece in engine.stream(Request(Task.DESCRIBE, (new_picture(IMAGE_SIDE, IMAGE_SIDE),))):
            first = first or time.perf_counter() - started
        result["finished"] = True
    except RequestTimedOut:
        result["finished"] = False
    result["first_text_s"] = round(first, 1) if first else None
    result["answer_s"] = round(time.perf_counter() - started, 1)
    result["tokens"] = engine.stats().tokens_generated
    result["told_after_it_s"] = round(engine.wait_s(1), 1)
    await engine.stop()
    say(f"longest answer: {result}")
    return result


def matmul_table() -> list[dict]:
    """One 3072x16384 product (the model's largest) per precision and library at 1, 4 and 512 rows."""
    import copy

    from inference.kernels.cpu_int8 import DequantScratch, Int8Linear

    rows_list, table = (1, 4, 512), []
    base = torch.nn.Linear(3072, 16384, bias=False)
    ways = {  # name: (make the module, the activations' precision)
        "float32": (lambda: base, torch.float32),
        "bf16": (lambda: copy.deepcopy(base).to(torch.bfloat16), torch.bfloat16),
        "ours int8": (lambda: Int8Linear.rounding(base, DequantScratch()), torch.float32),
    }
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        def torchao_way(config):
            def make():
                module = torch.nn.Sequential(copy.deepcopy(base).to(torch.bfloat16))
                quantize_(module, config)
                return module

            return make

        ways["torchao int8 weight-only"] = (torchao_way(Int8WeightOnlyConfig()), torch.bfloat16)
        ways["torchao int8 dynamic"] = (torchao_way(Int8DynamicActivationInt8WeightConfig()), torch.bfloat16)
        try:  # int4 weights, bf16 activations (PyTorch's tinygemm CPU kernel), a prototype in torchao 0.18
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

            ways["torchao int4 weight-only"] = (torchao_way(PrototypeInt4WeightOnlyConfig()), torch.bfloat16)
        except ImportError:
            say("this torchao has no int4 CPU workflow: its row is left out")
    except ImportError:
        say("torchao is not installed: its rows are left out")
    with torch.inference_mode():
        for name, (make, dtype) in ways.items():
            module = make()
            for rows in rows_list:
                x = torch.randn(rows, 3072, dtype=dtype)
                module(x)
                repeats = 3 if rows < 512 else 1
                start = time.perf_counter()
                for _ in range(repeats):
                    module(x)
                ms = round((time.perf_counter() - start) / repeats * 1e3, 2)
                table.append({"way": name, "rows": rows, "ms": ms})
                say(f"matmul {name} rows {rows}: {ms} ms")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ways",
        default=None,
        help=f"comma-separated, of {', '.join(WAYS)} (default: all "
        "where bf16 is native, else float32 and 8bit)",
    )
    parser.add_argument("--crops", default="16,4", help="crop settings whose first text is timed")
    parser.add_argument("--tokens", type=int, default=100, help="the describe answer's length")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a bf16 checkpoint built before")
    parser.add_argument("--matmul", action="store_true", help="also the 3072x16384 product table")
    parser.add_argument(
        "--longest",
        action="store_true",
        help="also one answer as long as allowed, every setting at its default",
    )
    parser.add_argument("--one", choices=[*WAYS, "longest"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    args.crops = [int(n) for n in args.crops.split(",") if n]
    if args.one:
        print(json.dumps(asyncio.run(longest_answer(args) if args.one == "longest" else one_way(args))))
        return
    from inference.loading import cpu_computes_bf16

    native_bf16 = cpu_computes_bf16()
    if args.ways is None:
        ways = [w for w in WAYS if native_bf16 or w != "bf16"]
    else:  # "" with --matmul: the product table alone
        ways = [w for w in args.ways.split(",") if w]
    if unknown := [w for w in ways if w not in WAYS]:
        parser.error(f"unknown way {unknown[0]!r}: choose among {', '.join(WAYS)}")
    result = {
        "bench": "cpu",
        "cpu": cpu_name(),
        "cores": torch.get_num_threads(),
        "flags": cpu_flags(),
        "bf16_native": native_bf16,
        "image": f"{IMAGE_SIDE}x{IMAGE_SIDE}",
        **versions(),
    }
    bandwidth = memory_bandwidth()
    result["memory_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    if args.matmul:
        result["matmul"] = matmul_table()
    with tempfile.TemporaryDirectory(prefix="phi3v-cpu-bench-") as temporary:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(temporary)
            say(f"building a random bf16 checkpoint in {checkpoint}")
            build_checkpoint(checkpoint)
        by_way = {}
        for way in [*ways, *(["longest"] if args.longest else [])]:
            say(f"{way}: starting")
            command = [
                sys.executable,
                __file__,
                "--one",
                way,
                "--checkpoint",
                str(checkpoint),
                "--crops",
                ",".join(map(str, args.crops)),
                "--tokens",
                str(args.tokens),
            ]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                by_way[way] = {"error": f"exit status {done.returncode}"}
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            if way == "longest":
                result["longest_answer"] = figures
                continue
            read_s = figures["weights_read_per_token_gib"] * GIB / bandwidth
            figures["step_at_bandwidth_limit_s"] = round(read_s, 3)
            step_s = figures["token_s_one_person"]
            figures["step_vs_limit"] = round(read_s / step_s, 2) if step_s > 0 else None
            by_way[way] = figures
        result["by_way"] = by_way
    print(json.dumps(result))
    if any("error" in figures for figures in result.get("by_way", {}).values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
