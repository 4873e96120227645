"""Fixtures shared by the inference tests: the tiny checkpoint, its golden cases, loaded once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "phi3v-tiny"
TINY_CHECKPOINT = TINY / "checkpoint"
OFFICIAL = FIXTURES / "phi3v-official"


def tiny_manifest() -> dict:
    return json.loads((TINY / "cases.json").read_text())


def case_images(case: dict, manifest: dict) -> list[Image.Image]:
    return [Image.open(TINY / manifest["images"][name]["file"]) for name in case["images"]]


@pytest.fixture(scope="session")
def manifest() -> dict:
    return tiny_manifest()


@pytest.fixture(scope="session")
def tiny_model():
    from inference import phi3v

    torch.manual_seed(0)
    model = phi3v.Phi3VForCausalLM.from_pretrained(
        TINY_CHECKPOINT, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_processor():
    from inference import phi3v

    return phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT)
