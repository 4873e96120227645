"""Every engine the bot can be given has all of what the bot uses (``inference.types.Engine``): the bot
calls it without probing, so a missing part would fail at run time, in front of people."""

from __future__ import annotations

import pytest

from inference import EngineConfig, LocalEngine
from inference.remote import RemoteConfig, RemoteEngine
from inference.types import Engine
from tests.fakes import FakeEngine


@pytest.mark.parametrize(
    "make",
    [
        lambda: LocalEngine(EngineConfig()),
        lambda: RemoteEngine(RemoteConfig(base_url="http://localhost:8000/v1")),
        lambda: FakeEngine(),
    ],
    ids=["local", "remote", "fake"],
)
def test_each_engine_has_everything_the_bot_uses(make):
    engine = make()
    assert isinstance(engine, Engine)
    assert engine.dead_reason is None and engine.on_dead is None  # nothing has died; the bot sets on_dead


def test_a_remote_engine_keeps_no_figures_and_estimates_no_wait():
    engine = RemoteEngine(RemoteConfig(base_url="http://localhost:8000/v1"))
    assert engine.stats() is None and engine.wait_s(3) is None
