"""How a server's choices merge with the owner's settings: the owner's limits always win."""

from __future__ import annotations

import pytest

from bot.errors import Denied
from bot.limits import AccessPolicy, Requester
from bot.server_settings import ServerChoices, server_policy
from bot.settings import Settings
from inference import Task

OWNER = Settings(user_cooldown_s=10, max_jobs_per_user=3, ocr_role_ids=frozenset({7}), ocr_public=False)


def policy(owner: Settings = OWNER, **choices):
    return server_policy(owner, AccessPolicy.from_settings(owner), ServerChoices(**choices))


def asker(channel: int, roles: frozenset[int] = frozenset()) -> Requester:
    return Requester(user_id=1, guild_id=100, channel_id=channel, role_ids=roles)


def test_a_server_that_chose_nothing_has_the_owners_settings():
    chosen = policy()
    assert (chosen.cooldown_s, chosen.jobs_per_person, chosen.ocr_public) == (10, 3, False)
    assert chosen.alt_text_channel_ids == frozenset()
    chosen.access.check(asker(5, frozenset({7})), Task.OCR)
    with pytest.raises(Denied):
        chosen.access.check(asker(5), Task.OCR)


def test_a_server_may_be_stricter_but_never_looser_than_the_owner():
    assert policy(cooldown_s=60).cooldown_s == 60
    assert policy(cooldown_s=1).cooldown_s == 10  # the owner's floor
    assert policy(jobs_per_person=1).jobs_per_person == 1
    assert policy(jobs_per_person=9).jobs_per_person == 3  # the owner's ceiling


def test_a_servers_channels_narrow_the_owners():
    owner = Settings(allowed_channel_ids=frozenset({1, 2}))
    narrowed = policy(owner, channel_ids=frozenset({2, 3})).access
    narrowed.check(asker(2), Task.DESCRIBE)
    for channel in (1, 3):  # allowed by only one of them
        with pytest.raises(Denied, match="<#2>"):
            narrowed.check(asker(channel), Task.DESCRIBE)


def test_a_servers_ocr_roles_replace_the_owners():
    chosen = policy(ocr_role_ids=frozenset({8})).access
    chosen.check(asker(5, frozenset({8})), Task.OCR)
    with pytest.raises(Denied):
        chosen.check(asker(5, frozenset({7})), Task.OCR)
    policy(ocr_role_ids=frozenset()).access.check(asker(5), Task.OCR)  # an empty list: everyone
