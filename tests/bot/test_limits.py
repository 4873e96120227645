"""Access policy and per-user job limits."""

from __future__ import annotations

import re

import pytest

from bot.errors import Denied, OnCooldown, TooManyJobs
from bot.limits import DM_DENIED_TEXT, GUILD_DENIED_TEXT, OCR_DENIED_TEXT, AccessPolicy, JobLimiter, Requester
from inference import Task

IN_GUILD = Requester(user_id=1, guild_id=10, channel_id=100)


def test_everything_is_allowed_by_default():
    policy = AccessPolicy()
    for task in Task:
        policy.check(IN_GUILD, task)
        policy.check(Requester(user_id=1, guild_id=None, channel_id=5), task)


def test_dms_can_be_turned_off():
    with pytest.raises(Denied, match=re.escape(DM_DENIED_TEXT)):
        AccessPolicy(allow_dms=False).check(Requester(1, None, 5), Task.DESCRIBE)
    AccessPolicy(allow_dms=False).check(IN_GUILD, Task.DESCRIBE)


def test_guild_allow_list():
    AccessPolicy(allowed_guild_ids=frozenset({10})).check(IN_GUILD, Task.DESCRIBE)
    with pytest.raises(Denied, match=re.escape(GUILD_DENIED_TEXT)):
        AccessPolicy(allowed_guild_ids=frozenset({11})).check(IN_GUILD, Task.DESCRIBE)


def test_channel_allow_list_names_the_allowed_channels_and_covers_threads():
    policy = AccessPolicy(allowed_channel_ids=frozenset({200}))
    with pytest.raises(Denied, match="<#200>"):
        policy.check(IN_GUILD, Task.DESCRIBE)
    policy.check(Requester(1, 10, 300, parent_channel_id=200), Task.DESCRIBE)


def test_ocr_roles():
    policy = AccessPolicy(ocr_role_ids=frozenset({50}))
    with pytest.raises(Denied, match=re.escape(OCR_DENIED_TEXT)):
        policy.check(IN_GUILD, Task.OCR)
    policy.check(Requester(1, 10, 100, role_ids=frozenset({50, 51})), Task.OCR)
    policy.check(IN_GUILD, Task.DESCRIBE)  # roles only gate OCR


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cooldown_between_requests():
    clock = Clock()
    limiter = JobLimiter(cooldown_s=10, max_jobs_per_user=5, clock=clock)
    with limiter.job(1):
        pass
    clock.now += 4
    with pytest.raises(OnCooldown) as caught:
        limiter.admit(1)
    assert caught.value.retry_after == pytest.approx(6)
    assert "6 s" in str(caught.value)
    limiter.admit(2)  # other people are not affected
    clock.now += 6
    limiter.admit(1)


def test_cap_on_jobs_in_progress_and_release_on_failure():
    limiter = JobLimiter(cooldown_s=0, max_jobs_per_user=2, clock=Clock())
    limiter.admit(1)
    limiter.admit(1)
    with pytest.raises(TooManyJobs, match="2 requests in progress"):
        limiter.admit(1)
    limiter.release(1)
    with pytest.raises(RuntimeError), limiter.job(1):
        assert limiter.active_jobs(1) == 2
        raise RuntimeError("engine exploded")
    assert limiter.active_jobs(1) == 1


def test_a_refused_request_does_not_start_a_cooldown():
    clock = Clock()
    limiter = JobLimiter(cooldown_s=10, max_jobs_per_user=1, clock=clock)
    limiter.admit(1)
    clock.now += 20
    with pytest.raises(TooManyJobs):
        limiter.admit(1)
    limiter.release(1)
    limiter.admit(1)


def test_an_hourly_quota_counts_each_persons_requests_in_a_sliding_hour():
    from bot.errors import OverHourlyQuota

    now = [0.0]
    limiter = JobLimiter(cooldown_s=0, max_jobs_per_user=5, per_hour=3, clock=lambda: now[0])
    for minute in (0, 10, 20):
        now[0] = minute * 60.0
        with limiter.job(1):
            pass
    now[0] = 30 * 60.0
    with pytest.raises(OverHourlyQuota) as refused:
        limiter.admit(1)
    assert refused.value.retry_after == pytest.approx(30 * 60)
    assert "3 requests in the last hour" in str(refused.value) and "30 min" in str(refused.value)
    with limiter.job(2):  # others are not held back
        pass
    now[0] = 60 * 60.0  # the first request is an hour old
    with limiter.job(1):
        pass


def test_without_an_hourly_quota_nobody_is_counted():
    limiter = JobLimiter(cooldown_s=0, max_jobs_per_user=5)
    for _ in range(100):
        with limiter.job(1):
            pass


def test_a_person_is_told_a_refusal_at_most_every_interval():
    from bot.limits import RefusalThrottle

    now = [0.0]
    throttle = RefusalThrottle(interval_s=30, clock=lambda: now[0])
    assert throttle.may_tell(1) and not throttle.may_tell(1) and throttle.may_tell(2)
    now[0] = 29.0
    assert not throttle.may_tell(1)
    now[0] = 30.0
    assert throttle.may_tell(1)
