"""Putting a fast module in place of transformers' own, or the other way back, without swapping any class:
each module of a kind is replaced by a new one of the wanted kind, built to hold the very same parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)


def replace_modules(
    model: torch.nn.Module, base: type[M], wanted: type[M], build: Callable[[type[M], M], M]
) -> int:
    """Every ``base`` module of ``model`` that is not a ``wanted`` one becomes ``build(wanted, module)``,
    under the same name; returns how many ``base`` modules there are."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, base)]
    for name, module in found:
        if type(module) is not wanted:
            model.set_submodule(name, build(wanted, module))
    return len(found)
