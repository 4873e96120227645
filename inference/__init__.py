"""Inference: Phi-3-vision behind a small async API. Knows nothing of Discord.

Public API::

    from inference import LocalEngine, EngineConfig, Request, Task
    engine = LocalEngine(EngineConfig())  # the published Phi-3-vision by default
    await engine.start()
    async for piece in engine.stream(Request(Task.DESCRIBE, (image,), question="What is this?")):
        ...
"""

from inference.errors import (
    EngineBusy,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
    ModelNotFound,
    OutOfMemory,
    RequestTimedOut,
)
from inference.types import Engine, EngineConfig, EngineStats, Media, Priority, Request, Result, Task, Turn

__all__ = [
    "Priority",
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EngineStats",
    "EngineUnavailable",
    "InferenceError",
    "InvalidRequest",
    "LocalEngine",
    "Media",
    "ModelNotFound",
    "OutOfMemory",
    "RemoteConfig",
    "RemoteEngine",
    "Request",
    "RequestTimedOut",
    "Result",
    "Task",
    "Turn",
]


def __getattr__(name: str):
    # LocalEngine pulls in torch and transformers; import the engines only when asked for.
    if name == "LocalEngine":
        from inference.serving.engine import LocalEngine

        return LocalEngine
    if name in ("RemoteEngine", "RemoteConfig"):
        import inference.remote

        return getattr(inference.remote, name)
    raise AttributeError(name)
