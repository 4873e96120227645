"""The same checks on a CUDA GPU (skipped on machines without one, such as CI)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from safetensors.numpy import load_file

from inference import EngineConfig, LocalEngine, Request, Task
from tests.inference.conftest import TINY, TINY_CHECKPOINT, case_images, tiny_manifest

# A cache of a fixed size: sized from free memory, the tiny model's cache would take 0.9 of the GPU, and a
# second runner in the same test (or one built while PyTorch still holds an earlier one's memory) gets none.
SMALL_CACHE = 16384

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_golden_logits_on_the_gpu():
    import inference.phi3v as phi3v

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = phi3v.Phi3VForCausalLM.from_pretrained(
        TINY_CHECKPOINT, dtype=torch.float32, attn_implementation="sdpa"
    )
    model = model.to("cuda").eval()
    processor = phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT)
    manifest = tiny_manifest()
    for case in manifest["cases"]:
        if case["batch_size"] != 1:
            continue
        inputs = processor(text=case["prompts"][0], images=case_images(case, manifest) or None)
        inputs = {k: (v.to("cuda") if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1].float().cpu()
        expected = torch.from_numpy(load_file(TINY / case["file"])["logits_last"])
        torch.testing.assert_close(logits, expected, atol=2e-3, rtol=1e-3, msg=case["name"])


async def test_engine_batches_on_the_gpu_like_alone():
    engine = LocalEngine(
        EngineConfig(
            model_id=str(TINY_CHECKPOINT),
            device="cuda",
            dtype="float32",
            max_new_tokens=12,
            batch_window_ms=50,
        )
    )
    await engine.start()
    try:
        images = [case_images(c, tiny_manifest()) for c in tiny_manifest()["cases"] if len(c["images"]) == 1][
            :4
        ]
        requests = [Request(Task.DESCRIBE, tuple(i), user_id=n) for n, i in enumerate(images)]
        alone = [await engine.generate(r) for r in requests]
        together = await asyncio.gather(*(engine.generate(r) for r in requests))
        assert [r.text for r in together] == [r.text for r in alone]
    finally:
        await engine.stop()


def test_the_runner_answers_like_generate_in_bf16():
    """The kernel the start-up check chose (in place, prompts in chunks) against transformers' generate."""
    from inference.loading import load
    from inference.serving.startup import start_runner
    from tests.inference.serving.test_runner import Recorder, generate, image

    config = EngineConfig(
        model_id=str(TINY_CHECKPOINT),
        device="cuda",
        dtype="bfloat16",
        max_new_tokens=8,
        prefill_chunk_tokens=700,
        token_budget=SMALL_CACHE,
    )
    request = Request(Task.DESCRIBE, (image(300, 500, 2),), question="What is this?")
    runner = start_runner(load(config), config)
    assert runner.attention.name in ("fused", "triton")  # keys read in place, no gather
    assert runner.fused_norms and runner.fused_rope  # against generate's model, freshly loaded: transformers'
    runner.stop_ids = set()
    recorder = Recorder(runner)
    prepared = runner.prepare(request)
    recorder.step([(1, prepared)])
    recorder.finish()
    tokens, logits = generate(load(config).model, prepared)
    assert recorder.tokens[1][0] == tokens[0]
    first = recorder.logits[1][0].float().cpu(), logits[0].float().cpu()
    torch.testing.assert_close(first[0], first[1], atol=0.05 * float(first[1].abs().max()), rtol=0)


def test_the_start_up_check_passes_at_the_published_shape():
    from inference.kernels.attention_backends import check_causal_bias, choose_backend
    from inference.kernels.fused_attention import check_fused_rope
    from inference.kernels.norms import check_fused_norm

    cuda = torch.device("cuda")
    assert check_causal_bias(cuda, torch.bfloat16, heads=32, head_dim=96) is None
    assert check_fused_norm(cuda, torch.bfloat16, 3072, 1e-5) is None
    assert check_fused_rope(cuda, torch.bfloat16, heads=32, kv_heads=32, head_dim=96) is None

    choice = choose_backend(
        torch.device("cuda"),
        torch.bfloat16,
        heads=32,
        kv_heads=32,
        head_dim=96,
        sliding_window=131072,
        max_rows=32,
    )
    assert choice.backend.name in ("fused", "triton") and not choice.refused, choice.summary()


def test_decoding_from_cuda_graphs_answers_like_eager_steps():
    """Graph-captured decoding steps, checked at start-up, against the same steps run eagerly.

    The answers are read from the runner's events (a replayed graph calls no Python hooks). In float32:
    three rows replay the graph of four (a padded row), and matrix products of a different height may
    round differently; in bf16 that flips the tiny random model's near-even choices."""
    from inference.loading import load
    from inference.serving.startup import start_runner
    from tests.inference.serving.test_runner import image

    requests = [
        Request(Task.DESCRIBE, (image(300, 500, 2),), question="What is this?"),
        Request(Task.OCR, (image(90, 60, 1),)),
        Request(Task.DESCRIBE, (image(200, 120, 3),)),
    ]
    answers = []
    for graphs in (True, False):
        config = EngineConfig(
            model_id=str(TINY_CHECKPOINT),
            device="cuda",
            dtype="float32",
            max_new_tokens=16,
            cuda_graphs=graphs,
            token_budget=SMALL_CACHE,
        )
        runner = start_runner(load(config), config)
        assert bool(runner.decode_step.graphs) is graphs and runner.graphs_checked is graphs
        runner.stop_ids = set()  # every answer its full length: the same steps both ways
        texts, tokens, logits = {1: "", 2: "", 3: ""}, {1: 0, 2: 0, 3: 0}, []
        admit = [(i + 1, runner.prepare(r)) for i, r in enumerate(requests)]
        while admit or runner.running_ids:
            decoding = len(runner.running_ids)  # rows that had a token before this step
            runner.decode_step.logits = None  # set again only by a step that decodes
            for event in runner.step(admit, []):
                assert event.error is None, event.error
                texts[event.request_id] += event.text
                tokens[event.request_id] += event.new_tokens if event.finished else 0
            if runner.decode_step.logits is not None:  # a replayed graph's has padding rows after these
                logits.append(runner.decode_step.logits[:decoding].float().cpu())
            admit = []
        assert tokens == {1: 16, 2: 16, 3: 16}
        answers.append((texts, logits))
        del runner
    (graph_texts, graph_logits), (eager_texts, eager_logits) = answers
    assert graph_texts == eager_texts
    assert len(graph_logits) == len(eager_logits) > 10
    for graph, eager in zip(graph_logits, eager_logits, strict=True):
        torch.testing.assert_close(graph, eager, atol=1e-4, rtol=1e-4)
