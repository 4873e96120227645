"""Phi-3-vision implemented natively on transformers 5.x (no remote code).

Importing this package registers ``phi3_v`` with transformers' Auto classes, so
``AutoConfig``, ``AutoModelForCausalLM``, ``AutoImageProcessor`` and
``AutoProcessor`` load published checkpoints without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

from inference.phi3v.configuration_phi3v import IMAGE_TOKEN_ID, Phi3VConfig
from inference.phi3v.image_processing_phi3v import Phi3VImageProcessor
from inference.phi3v.modeling_phi3v import Phi3VForCausalLM, Phi3VModel
from inference.phi3v.processing_phi3v import Phi3VProcessor

AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)
AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)

__all__ = [
    "IMAGE_TOKEN_ID",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VModel",
    "Phi3VProcessor",
]
