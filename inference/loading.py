"""Find a checkpoint (local folder or hub id), pick device / precision / attention, load model + processor.

The only module that touches the filesystem or the hub for model files. Errors
are ``ModelNotFound`` / ``InvalidRequest`` with a message an owner can act on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inference.errors import InvalidRequest, ModelNotFound
from inference.types import PUBLISHED_WEIGHT_BYTES, EngineConfig

if TYPE_CHECKING:
    from inference import phi3v

log = logging.getLogger(__name__)

# Files a Phi-3-vision checkpoint needs; we never fetch the remote *.py code.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "tokenizer.model"]


@dataclass(frozen=True)
class LoadedModel:
    model: phi3v.Phi3VForCausalLM
    processor: phi3v.Phi3VProcessor
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    source: Path


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidRequest(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(
            "DEVICE is set to cuda but PyTorch sees no CUDA GPU (is the CUDA build installed?)."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequest("DEVICE is set to mps but Apple's Metal backend is not available.")
    return device


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Intel AMX, or AVX-512 BF16 on Intel and AMD), as PyTorch
    detects it: there bf16 is several times faster than float32 and halves the memory; elsewhere it is
    emulated and slower."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    name = (name or "auto").lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_computes_bf16() else torch.float32
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if name not in table:
        raise InvalidRequest(f"Unknown dtype {name!r}: use auto, bfloat16, float16 or float32.")
    return table[name]


def resolve_attention(name: str, device: torch.device) -> str:
    name = (name or "auto").lower()
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        return "flash_attention_2" if device.type == "cuda" and has_flash else "sdpa"
    if name == "flash_attention_2" and not (has_flash and device.type == "cuda"):
        raise InvalidRequest(
            "flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(.venv/bin/pip install flash-attn --no-build-isolation, as the README says)."
        )
    if name not in {"flash_attention_2", "sdpa", "eager"}:
        raise InvalidRequest(f"Unknown attention {name!r}: use auto, flash_attention_2, sdpa or eager.")
    return name


def configure_attention_kernels(device: torch.device) -> None:
    """Keep PyTorch's sdpa off its cuDNN backend on CUDA (flash and memory-efficient kernels remain).

    cuDNN's attention builds an execution plan per input shape, and while decoding the key length
    grows by one every step, so every step of every layer planned anew: measured on an H100 (torch
    2.11), about 1.5 ms of CPU per layer per token, some 45 ms a token for the 32 layers while the
    GPU idled (``bench/step_profile.py``). The setting is process-wide; the model thread is its user.
    """
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def use_language_attention(model, name: str) -> None:
    """The language model attends with ``name``; the vision tower keeps its own attention."""
    if model.config._attn_implementation == name:
        return
    tower = model.model.vision_embed_tokens.img_processor
    tower_attention = tower.config._attn_implementation
    model.set_attn_implementation({"": name, "vision_config": tower_attention})
    tower.set_attn_implementation(tower_attention)


def _say_download(model_id: str) -> None:
    from huggingface_hub import constants

    size = PUBLISHED_WEIGHT_BYTES.get(model_id)
    how_big = f"~{size / 1e9:.1f} GB" if size else "size unknown"
    log.info(
        "Downloading %s (%s) into %s; this happens once (an interrupted download resumes at the next start)",
        model_id,
        how_big,
        constants.HF_HUB_CACHE,
    )


def not_downloaded_text(model_id: str) -> str:
    return (
        f"{model_id} is not in the local Hugging Face cache and cannot be downloaded "
        "(offline, or HF_HUB_OFFLINE=1). Connect once to download it, "
        "or point MODEL_ID / --model at a local folder."
    )


def resolve_checkpoint(model_id: str) -> Path:
    """A local folder as it is, or a hub id downloaded (with a progress bar) into the HF cache.

    Honours HF_HOME and HF_HUB_OFFLINE like every Hugging Face tool.
    """
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFound(
                f"{local} is a folder but has no config.json: is it a Phi-3-vision checkpoint?"
            )
        return local
    if model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:
        raise ModelNotFound(f"Model folder {model_id!r} does not exist.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        try:
            return Path(snapshot_download(model_id, allow_patterns=CHECKPOINT_FILES, local_files_only=True))
        except LocalEntryNotFoundError:
            _say_download(model_id)
        return Path(snapshot_download(model_id, allow_patterns=CHECKPOINT_FILES))
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(not_downloaded_text(model_id)) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(
            f"No model called {model_id!r} on the Hugging Face hub (check the spelling)."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFound(f"Could not download {model_id}: {exc}") from exc


class CpuInt8:
    """``QUANTIZATION=8bit`` on the CPU: the language model's linear layers get int8 weights after loading
    (:mod:`inference.kernels.cpu_int8`); no extra package needed."""

    def __repr__(self) -> str:
        return "CpuInt8()"


def resolve_quantization(mode: str, device: torch.device) -> str:
    """``auto`` is 8-bit on a CPU, where answering is bound by reading the weights (about twice as fast as
    bf16, several times float32), and none on a GPU, whose memory holds bf16 and where bf16 is fastest."""
    mode = (mode or "auto").lower()
    if mode == "auto":
        return "8bit" if device.type == "cpu" else "none"
    if mode not in {"none", "4bit", "8bit"}:
        raise InvalidRequest(f"Unknown quantization {mode!r}: use auto, none, 4bit or 8bit.")
    return mode


def quantization_config(mode: str, dtype: torch.dtype, device: torch.device):
    mode = resolve_quantization(mode, device)
    if mode == "none":
        return None
    if device.type == "cpu":
        if mode == "4bit":
            raise InvalidRequest(
                "QUANTIZATION=4bit needs a CUDA GPU; on the CPU use QUANTIZATION=8bit "
                "(4-bit weights were slower than 8-bit on the CPU we measured, and less exact)."
            )
        return CpuInt8()
    if device.type != "cuda":
        raise InvalidRequest(
            "4-bit and 8-bit loading need a CUDA GPU (bitsandbytes), or QUANTIZATION=8bit on the CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidRequest("4-bit and 8-bit loading need bitsandbytes: pip install '.[quant]'.")
    from transformers import BitsAndBytesConfig

    # The vision tower and projector stay in full precision: small, and sensitive to rounding.
    keep = ["vision_embed_tokens", "lm_head"]
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=keep,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


@contextlib.contextmanager
def _loading_bar(show: bool) -> Iterator[None]:
    """transformers' weight-loading progress bar only when asked for (DEBUG); the download's bars stay."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    if was_on and not show:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on and not show:
            transformers_logging.enable_progress_bar()


def resolve_choices(config: EngineConfig) -> tuple[torch.device, torch.dtype, str, object]:
    """Device, precision, attention and quantization: what :func:`load` decides before reading any file, with
    the same :class:`InvalidRequest` when a setting cannot work here (``python -m bot --check`` asks too)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    attn = resolve_attention(config.attn_implementation, device)
    return device, dtype, attn, quantization_config(config.quantization, dtype, device)


def load(config: EngineConfig) -> LoadedModel:
    """Load the model and processor described by ``config`` (blocking; run it off the event loop)."""
    from inference import phi3v

    device, dtype, attn, quant = resolve_choices(config)
    on_cpu_int8 = isinstance(quant, CpuInt8)
    if device.type == "cpu":
        log.warning(
            "Running on the CPU: answers take tens of seconds to minutes (the start measures how long)%s",
            "" if on_cpu_int8 else "; QUANTIZATION=8bit (auto's choice on a CPU) answers about twice as fast",
        )
    source = resolve_checkpoint(config.model_id)
    log.info(
        "Loading %s on %s (%s, attention %s%s)",
        source,
        device,
        str(dtype).removeprefix("torch."),
        attn,
        f", {resolve_quantization(config.quantization, device)}" if quant else "",
    )
    # 8-bit on the CPU loads in bf16 (the checkpoint's own precision, half of float32's memory) and rounds the
    # language model to int8 layer by layer; the rest then takes the chosen precision.
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if on_cpu_int8 else dtype, "attn_implementation": attn}
    if quant is not None and not on_cpu_int8:
        kwargs.update(quantization_config=quant, device_map={"": device.index or 0})
    try:
        with _loading_bar(log.isEnabledFor(logging.DEBUG)):
            model = phi3v.Phi3VForCausalLM.from_pretrained(source, **kwargs)
        processor = phi3v.Phi3VProcessor.from_pretrained(source, num_crops=config.num_crops)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"Could not load a Phi-3-vision checkpoint from {source}: {exc}") from exc
    if on_cpu_int8:
        from inference.kernels.cpu_int8 import cache_file, quantize_language_model

        started = time.perf_counter()
        layers = quantize_language_model(model, cache=cache_file(source))
        model.to(dtype)  # type: ignore[arg-type]  # transformers' wrapper around Module.to is typed for its own use
        log.info(
            "Language model in 8-bit: %d linear layers with int8 weights (%.1f s)",
            layers,
            time.perf_counter() - started,
        )
    if quant is None:
        model.to(device)  # type: ignore[arg-type]  # (as above)
    model.eval()
    configure_attention_kernels(device)
    memory = ""
    if device.type == "cuda":
        memory = f", {torch.cuda.memory_allocated(device) / 1e9:.1f} GB of GPU memory in use"
    dtype_name = str(dtype).removeprefix("torch.")
    if on_cpu_int8:
        dtype_name += ", the language model's weights in 8 bits"
    log.info("Model ready on %s (%s, %s attention%s)", device, dtype_name, attn, memory)
    return LoadedModel(model, processor, device, dtype, attn, source)
