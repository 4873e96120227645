"""The buttons under answers: Stop while writing; Ask a follow-up (a modal) and Delete when done."""

from __future__ import annotations

import discord
import pytest
from simcord.backend.errors import SetupError

from bot.conversation import FORGOTTEN_TEXT, NOT_YOURS_TEXT
from bot.errors import UserFacingError
from bot.gather import IMAGES_GONE_TEXT
from bot.jobs import trimmed_note
from bot.reply import WORKING_TEXT
from cogs.answer_buttons import (
    DELETE_DENIED_TEXT,
    DELETE_LABEL,
    FOLLOW_UP_LABEL,
    NOT_RUNNING_TEXT,
    STOP_DENIED_TEXT,
    STOP_LABEL,
)
from inference import Turn
from tests.conftest import acknowledge_errors, bot_messages, image_bytes


def labels(message) -> list[str]:
    """The labels of the buttons under a message (a channel message or an interaction response)."""
    found = []
    for row in message.components:
        children = row.get("components", []) if isinstance(row, dict) else getattr(row, "children", [])
        for child in children:
            label = child.get("label") if isinstance(child, dict) else getattr(child, "label", None)
            if label:
                found.append(label)
    return found


def current(world, message):
    """The message as the channel shows it now."""
    return next(m for m in world.channel.history() if m.id == message.id)


async def ask(world, text, *, member=None, reply_to=None, attachments=()):
    await (member or world.member).send(world.channel, text, reply_to=reply_to, attachments=list(attachments))
    return bot_messages(world.channel)[-1]


async def follow_up_by_button(member, message, question: str):
    shown = await member.click(message, label=FOLLOW_UP_LABEL)
    assert shown.modal is not None, "the button should open the question form"
    return await member.submit_modal(shown, {"question": question})


def moderator_of(world):
    role = world.guild.create_role("Mods", permissions=discord.Permissions(manage_messages=True))
    return world.guild.add_member(world.env.create_user("mod"), roles=[role])


async def test_a_finished_answer_has_follow_up_and_delete_buttons(world, fake_engine):
    answer = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    assert labels(answer) == [FOLLOW_UP_LABEL, DELETE_LABEL]


async def test_a_follow_up_through_the_button_and_its_form(world, fake_engine):
    fake_engine.answer_next("A red car by a sign.", "It says STOP.", "Parked.")
    first = await ask(world, "!describe", attachments=[("car.png", image_bytes((30, 20)))])
    result = await follow_up_by_button(world.member, first, "what does the sign say?")
    assert result.response.content == "It says STOP."
    assert not result.ephemeral  # shown like the public answer it continues
    assert fake_engine.requests[-1].history == (Turn(None, "A red car by a sign."),)
    assert fake_engine.requests[-1].question == "what does the sign say?"
    assert [image.size for image in fake_engine.requests[-1].images] == [(30, 20)]

    # The button's answer has buttons of its own, and anyone in the channel may continue.
    second = current(world, result.response)
    assert labels(second) == [FOLLOW_UP_LABEL, DELETE_LABEL]
    bob = world.guild.add_member(world.env.create_user("bob"))
    third = await follow_up_by_button(bob, second, "is it moving?")
    assert third.response.content == "Parked."
    assert [turn.question for turn in fake_engine.requests[-1].history] == [None, "what does the sign say?"]


async def test_a_private_answer_is_followed_up_privately_by_its_asker(world, fake_engine):
    fake_engine.answer_next("TOTAL 12.50", "12.50")
    result = await world.member.slash(world.channel, "ocr", image=("receipt.png", image_bytes()))
    assert result.ephemeral and labels(result.response) == [FOLLOW_UP_LABEL]  # Discord's Dismiss deletes
    follow_up = await follow_up_by_button(world.member, result.response, "what is the total?")
    assert follow_up.ephemeral
    assert follow_up.response.content == "```\n12.50\n```"


async def test_someone_elses_private_answer_cannot_be_followed_up(world, fake_engine):
    result = await world.member.slash(world.channel, "ocr", image=("receipt.png", image_bytes()))
    bob = world.guild.add_member(world.env.create_user("bob"))
    # Discord shows a private answer (and its buttons) to its asker only...
    with pytest.raises(SetupError, match="not visible to this user"):
        await bob.click(result.response, label=FOLLOW_UP_LABEL)
    # ...and the bot checks anyway, for any other way in (a reply by message id, say).
    kept = await world.env.bot.conversations.recall(result.response.id)
    with pytest.raises(UserFacingError) as refused:
        kept.check_may_follow_up(bob.id)
    assert str(refused.value) == NOT_YOURS_TEXT
    assert len(fake_engine.requests) == 1


async def test_stop_by_the_asker_ends_the_answer_at_once(world, fake_engine):
    fake_engine.hold(world.env, after_pieces=1)  # the answer has begun
    working = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    assert working.content == WORKING_TEXT and labels(working) == [STOP_LABEL]
    await world.member.click(working, label=STOP_LABEL)
    stopped = current(world, working)
    assert stopped.content == "Stopped by alice."
    assert labels(stopped) == []  # no buttons on an answer that was not given
    assert fake_engine.closed_streams == 1  # the generation itself stopped


async def test_a_slash_answer_shows_stop_at_once_and_can_be_stopped(world, fake_engine):
    fake_engine.hold(world.env)  # still in line
    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert result.response.content == WORKING_TEXT and labels(result.response) == [STOP_LABEL]
    await world.member.click(result.response, label=STOP_LABEL)
    assert result.response.content == "Stopped by alice." and labels(result.response) == []
    assert fake_engine.requests and not bot_messages(world.channel)[1:]


async def test_only_the_asker_or_a_moderator_may_stop(world, fake_engine):
    fake_engine.hold(world.env)
    working = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    bob = world.guild.add_member(world.env.create_user("bob"))
    refused = await bob.click(working, label=STOP_LABEL)
    assert refused.ephemeral and refused.response.content == STOP_DENIED_TEXT
    assert current(world, working).content == WORKING_TEXT
    await moderator_of(world).click(working, label=STOP_LABEL)
    assert current(world, working).content == "Stopped by mod."


async def test_a_stale_stop_button_says_the_answer_is_not_running(world, fake_engine):
    fake_engine.hold(world.env)
    working = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    world.env.bot.running_jobs._tasks.clear()  # as after a restart: no job by that id any more
    result = await world.member.click(working, label=STOP_LABEL)
    assert result.ephemeral and result.response.content == NOT_RUNNING_TEXT
    fake_engine.release()
    await world.env.settle()


async def test_delete_by_the_asker_or_a_moderator_only(world, fake_engine):
    answer = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    bob = world.guild.add_member(world.env.create_user("bob"))
    refused = await bob.click(answer, label=DELETE_LABEL)
    assert refused.ephemeral and refused.response.content == DELETE_DENIED_TEXT
    assert any(m.id == answer.id for m in world.channel.history())
    acknowledge_errors(world.env)

    await world.member.click(answer, label=DELETE_LABEL)
    assert all(m.id != answer.id for m in world.channel.history())

    other = await ask(world, "!describe", attachments=[("b.png", image_bytes())])
    await moderator_of(world).click(other, label=DELETE_LABEL)
    assert bot_messages(world.channel) == []


async def test_delete_removes_every_message_of_a_long_answer(world, fake_engine):
    fake_engine.answer_next("word " * 900)  # about 4,500 characters: three messages
    await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    parts = bot_messages(world.channel)
    assert len(parts) == 3 and labels(parts[0]) == [FOLLOW_UP_LABEL, DELETE_LABEL]
    await world.member.click(parts[0], label=DELETE_LABEL)
    assert bot_messages(world.channel) == []


async def test_deleting_the_picture_forgets_the_conversation(world, fake_engine):
    photo = await world.member.send(world.channel, "look", attachments=[("a.png", image_bytes())])
    answer = await ask(world, "!describe", reply_to=photo)
    await world.member.delete(photo)
    shown = await ask(world, "!describe and the colour?", reply_to=answer)
    assert shown.content == str(FORGOTTEN_TEXT)
    assert len(fake_engine.requests) == 1
    acknowledge_errors(world.env)


async def test_a_conversation_whose_image_went_while_the_bot_was_away_says_so(world, fake_engine):
    photo = await world.member.send(world.channel, "look", attachments=[("a.png", image_bytes())])
    answer = await ask(world, "!describe", reply_to=photo)
    await world.env.bot.remove_cog("Privacy")  # the deletion is not seen, as when the bot is offline
    await world.member.delete(photo)
    shown = await ask(world, "!describe and the colour?", reply_to=answer)
    assert shown.content == IMAGES_GONE_TEXT
    assert len(fake_engine.requests) == 1
    acknowledge_errors(world.env)


async def test_a_follow_up_reads_the_image_again_from_its_message(world, fake_engine):
    answer = await ask(world, "!describe", attachments=[("a.png", image_bytes((9, 7)))])
    fetcher = world.env.bot.fetcher
    fetcher.urls.clear()
    await follow_up_by_button(world.member, answer, "and the colour?")
    assert [image.size for image in fake_engine.requests[-1].images] == [(9, 7)]
    assert len(fetcher.urls) == 1  # the link found on the message now, not the one kept


async def test_a_long_conversation_tells_the_person_what_was_left_out(world, fake_engine):
    first = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    second = await ask(world, "!describe one?", reply_to=first)
    third = await ask(world, "!describe two?", reply_to=second)
    fake_engine.left_out_next = 1
    fake_engine.answer_next("The answer.")
    shown = await ask(world, "!describe three?", reply_to=third)
    assert shown.content == "The answer.\n-# " + str(trimmed_note(1))
    # The note is not part of what the model said, so it is not kept as the answer.
    kept = await world.env.bot.conversations.recall(shown.id)
    assert kept.turns[-1] == Turn("three?", "The answer.")


@pytest.fixture
def database_file(tmp_path):
    return str(tmp_path / "data" / "bot.sqlite3")


@pytest.fixture
async def simcord_bot(make_bot, database_file):
    """These tests keep the database in a file, so a restarted bot finds it."""
    bot = make_bot(database_path=database_file)
    yield bot
    await bot.close()


async def test_buttons_and_follow_ups_work_after_a_restart(world, fake_engine, make_bot, database_file):
    fake_engine.answer_next("A red car.", "Red.", "Yes.")
    first = await ask(world, "!describe", attachments=[("car.png", image_bytes())])
    restarted = make_bot(database_path=database_file)
    await world.env.restart_bot(restarted)
    try:
        result = await follow_up_by_button(world.member, first, "what colour?")
        assert result.response.content == "Red."
        assert fake_engine.requests[-1].history == (Turn(None, "A red car."),)
        shown = await ask(world, "!describe is it new?", reply_to=current(world, result.response))
        assert shown.content == "Yes."
        await world.member.click(first, label=DELETE_LABEL)
        assert all(m.id != first.id for m in world.channel.history())
    finally:
        await restarted.close()
