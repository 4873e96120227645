"""The scheduler alone: bounded, fair across users, batched within limits, exact around LongRoPE."""

from __future__ import annotations

import itertools

import pytest

from inference.serving.scheduler import DoesNotFit, QueueFull, RopeRegime, Scheduler, Ticket, rope_regime
from inference.types import Priority

_ids = itertools.count(1)


def ticket(
    user: int | None, prompt: int = 100, new: int = 50, regime: RopeRegime = RopeRegime.SHORT
) -> Ticket:
    return Ticket(next(_ids), user, prompt, new, regime)


def test_rope_regimes():
    assert rope_regime(3000, 512, 4096) is RopeRegime.SHORT
    assert rope_regime(3000, 1096, 4096) is RopeRegime.SHORT  # ends exactly at the switch
    assert rope_regime(3000, 1097, 4096) is RopeRegime.CROSSING
    assert rope_regime(4097, 10, 4096) is RopeRegime.LONG


def test_queue_is_bounded():
    scheduler = Scheduler(max_batch_size=1, max_waiting=2)
    scheduler.add(ticket(1))
    scheduler.add(ticket(2))
    with pytest.raises(QueueFull):
        scheduler.add(ticket(3))
    scheduler.admit()  # one starts, making room
    scheduler.add(ticket(3))


def test_a_request_larger_than_the_budget_is_refused_up_front():
    with pytest.raises(DoesNotFit):
        Scheduler(token_budget=1000).add(ticket(1, prompt=900, new=200))


def test_round_robin_across_users():
    scheduler = Scheduler(max_batch_size=1, max_waiting=10)
    alice = [ticket(1) for _ in range(3)]
    bob = [ticket(2) for _ in range(2)]
    carol = ticket(3)
    for t in [*alice, *bob, carol]:
        scheduler.add(t)
    assert [t.request_id for t in scheduler.waiting_order()] == [
        alice[0].request_id,
        bob[0].request_id,
        carol.request_id,
        alice[1].request_id,
        bob[1].request_id,
        alice[2].request_id,
    ]
    served = []
    while scheduler.has_work():
        [started] = scheduler.admit()
        served.append(started.user_id)
        scheduler.finish(started.request_id)
    assert served == [1, 2, 3, 1, 2, 1]


def test_the_user_just_served_goes_to_the_back():
    scheduler = Scheduler(max_batch_size=1, max_waiting=10)
    first, second = ticket(1), ticket(1)
    scheduler.add(first)
    scheduler.add(second)
    [started] = scheduler.admit()
    late = ticket(2)
    scheduler.add(late)  # arrives after alice was served once: goes ahead of her second
    assert started is first
    assert scheduler.positions() == {late.request_id: 1, second.request_id: 2}


def test_batches_fill_up_to_size_and_budget():
    scheduler = Scheduler(max_batch_size=3, max_waiting=10, token_budget=1000)
    tickets = [ticket(u, prompt=200, new=100) for u in range(5)]
    for t in tickets:
        scheduler.add(t)
    assert len(scheduler.admit()) == 3  # size limit (3 x 300 = 900 tokens fits the budget)
    assert scheduler.admit() == []  # full
    scheduler.finish(tickets[0].request_id)
    assert [t.request_id for t in scheduler.admit()] == [tickets[3].request_id]


def test_budget_limits_the_batch():
    scheduler = Scheduler(max_batch_size=8, max_waiting=10, token_budget=1000)
    for u in range(4):
        scheduler.add(ticket(u, prompt=300, new=100))
    assert len(scheduler.admit()) == 2  # 2 x 400 = 800; a third would make 1200


def test_regimes_never_mix_and_crossing_runs_alone():
    scheduler = Scheduler(max_batch_size=8, max_waiting=10)
    short1, long1 = ticket(1), ticket(2, regime=RopeRegime.LONG)
    crossing, short2 = ticket(3, regime=RopeRegime.CROSSING), ticket(4)
    for t in (short1, long1, crossing, short2):
        scheduler.add(t)
    assert scheduler.admit() == [short1]  # the long one may not join; fairness keeps short2 behind it
    scheduler.finish(short1.request_id)
    assert scheduler.admit() == [long1]
    scheduler.finish(long1.request_id)
    assert scheduler.admit() == [crossing]
    assert scheduler.admit() == []  # nothing joins a crossing sequence
    scheduler.finish(crossing.request_id)
    assert scheduler.admit() == [short2]


def test_abort_removes_waiting_and_running_requests():
    scheduler = Scheduler(max_batch_size=1, max_waiting=10)
    running, waiting = ticket(1), ticket(2)
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.admit()
    assert scheduler.abort(waiting.request_id)
    assert scheduler.positions() == {}
    assert scheduler.abort(running.request_id)
    assert not scheduler.has_work()
    assert not scheduler.abort(12345)


# ---------------------------------------------------------------- two classes


def background(user: int | None) -> Ticket:
    return Ticket(next(_ids), user, 100, 50, RopeRegime.SHORT, Priority.BACKGROUND)


def test_people_go_before_background_work_whenever_it_arrived():
    scheduler = Scheduler(max_batch_size=1, max_waiting=10)
    early_alt_texts = [background(7), background(8)]
    for item in early_alt_texts:
        scheduler.add(item)
    people = [ticket(1), ticket(2), ticket(1)]
    for item in people:
        scheduler.add(item)
    served = []
    while scheduler.num_waiting or scheduler.waiting_in(Priority.BACKGROUND):
        [admitted] = scheduler.admit()
        served.append(admitted)
        scheduler.finish(admitted.request_id)
    assert served[:3] == [people[0], people[1], people[2]]  # fair among people: 1, 2, then 1 again
    assert served[3:] == early_alt_texts  # background last, and fair among its own users


def test_background_work_is_fair_within_its_class():
    scheduler = Scheduler(max_batch_size=1, max_waiting=10)
    burst = [background(7) for _ in range(3)]
    other = background(8)
    for item in [*burst, other]:
        scheduler.add(item)
    assert scheduler.waiting_order() == [burst[0], other, burst[1], burst[2]]


def test_each_class_has_its_own_bounded_line():
    scheduler = Scheduler(max_batch_size=1, max_waiting=2, max_background_waiting=1)
    scheduler.add(background(7))
    assert scheduler.has_work() and scheduler.num_waiting == 0  # background alone is work too
    with pytest.raises(QueueFull):
        scheduler.add(background(8))  # the background line is full...
    assert scheduler.is_full(Priority.BACKGROUND) and not scheduler.is_full()
    scheduler.add(ticket(1))  # ...which never takes a person's place
    scheduler.add(ticket(2))
    with pytest.raises(QueueFull):
        scheduler.add(ticket(3))
    assert scheduler.num_waiting == 2 and scheduler.waiting_in(Priority.BACKGROUND) == 1
    assert scheduler.positions()[scheduler.waiting_order()[0].request_id] == 1


def test_a_person_arriving_while_background_work_waits_is_admitted_first():
    scheduler = Scheduler(max_batch_size=2, max_waiting=10)
    running = ticket(1)
    scheduler.add(running)
    scheduler.admit()
    waiting_alt_text = background(7)
    scheduler.add(waiting_alt_text)
    newcomer = ticket(2)
    scheduler.add(newcomer)
    assert scheduler.admit() == [newcomer]  # the one free place goes to the person
    scheduler.finish(running.request_id)
    assert scheduler.admit() == [waiting_alt_text]


def server_ticket(server: int | None, user: int) -> Ticket:
    return Ticket(next(_ids), user, 100, 50, RopeRegime.SHORT, group_id=server)


def test_servers_take_turns_as_well_as_people():
    scheduler = Scheduler(max_batch_size=1, max_waiting=20)
    busy = [server_ticket(1, user) for user in (10, 11, 12, 13) for _ in range(2)]  # one busy server
    quiet = server_ticket(2, 20)  # one person of another server, arriving last
    for t in [*busy, quiet]:
        scheduler.add(t)
    order = scheduler.waiting_order()
    assert order[1] is quiet  # not behind the eight of the busy server
    assert [t.user_id for t in order if t.group_id == 1] == [10, 11, 12, 13, 10, 11, 12, 13]
    served = []
    while scheduler.has_work():
        [started] = scheduler.admit()
        served.append(started.group_id)
        scheduler.finish(started.request_id)
    assert served[:2] == [1, 2]


def test_one_server_holds_at_most_half_the_line():
    scheduler = Scheduler(max_batch_size=1, max_waiting=4)
    scheduler.add(server_ticket(1, 10))
    assert not scheduler.group_is_full(Priority.PEOPLE, 1)
    scheduler.add(server_ticket(1, 11))
    assert scheduler.group_is_full(Priority.PEOPLE, 1)  # two of four places
    assert scheduler.group_is_full(Priority.PEOPLE, 2, held=2)  # places promised count too
    assert not scheduler.group_is_full(Priority.PEOPLE, 2, held=1)
    assert not scheduler.group_is_full(Priority.PEOPLE, None, held=10)  # DMs have no share to keep to
    assert not scheduler.group_is_full(Priority.BACKGROUND, 1)  # each class has its own line
