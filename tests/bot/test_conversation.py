"""Follow-ups by replying to one of the bot's answers with a prefix command (or @bot command)."""

from __future__ import annotations

import time

import pytest

from bot.conversation import FORGOTTEN_TEXT, QUESTION_NEEDED_TEXT, Answered, Conversations
from bot.database import Database
from bot.errors import Denied, UserFacingError
from bot.images import ImageSource
from bot.limits import OCR_DENIED_TEXT
from inference import Task, Turn
from inference.errors import TooManyTurns
from inference.prompts import MAX_TURNS
from tests.conftest import acknowledge_errors, bot_messages, image_bytes, reconfigure


async def ask(world, text: str, *, reply_to=None, attachments=()):
    await world.member.send(world.channel, text, reply_to=reply_to, attachments=list(attachments))
    return bot_messages(world.channel)[-1]


async def test_a_three_turn_conversation_by_replies(world, fake_engine):
    fake_engine.answer_next("A red car by a sign.", "It says STOP.", "No, it is parked.")
    first = await ask(world, "!describe", attachments=[("car.png", image_bytes((30, 20)))])
    second = await ask(world, "!describe what does the sign say?", reply_to=first)
    bot_user = world.env.bot.user
    third = await ask(world, f"<@{bot_user.id}> describe is the car moving?", reply_to=second)

    assert [first.content, second.content, third.content] == [
        "A red car by a sign.",
        "It says STOP.",
        "No, it is parked.",
    ]
    follow_up = fake_engine.requests[-1]
    assert follow_up.question == "is the car moving?"
    assert follow_up.history == (
        Turn(None, "A red car by a sign."),
        Turn("what does the sign say?", "It says STOP."),
    )
    assert follow_up.task is Task.DESCRIBE
    assert [image.size for image in follow_up.images] == [(30, 20)]  # the first turn's image, fetched again


async def test_a_follow_up_keeps_the_conversations_task(world, fake_engine):
    fake_engine.answer_next("TOTAL 12.50", "12.50")
    first = await ask(world, "!ocr", attachments=[("receipt.png", image_bytes())])
    second = await ask(world, "!describe what is the total?", reply_to=first)
    assert fake_engine.requests[-1].task is Task.OCR
    assert second.content == "```\n12.50\n```"  # shown as OCR, in a code block


async def test_a_follow_up_needs_a_question(world, fake_engine):
    first = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    shown = await ask(world, "!describe", reply_to=first)
    assert shown.content == QUESTION_NEEDED_TEXT
    assert len(fake_engine.requests) == 1
    assert acknowledge_errors(world.env) == [UserFacingError]


async def forget_everything(bot) -> None:
    """As after the days conversations are kept."""
    await bot.conversations.forget_older_than(time.time() + 1)


async def test_a_forgotten_conversation_says_so(world, fake_engine):
    first = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    await forget_everything(world.env.bot)
    shown = await ask(world, "!describe and the colour?", reply_to=first)
    assert shown.content == str(FORGOTTEN_TEXT)
    assert acknowledge_errors(world.env) == [UserFacingError]


async def test_a_conversation_ends_at_the_turn_limit(world, fake_engine):
    last = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    for turn in range(1, MAX_TURNS):
        last = await ask(world, f"!describe question {turn}?", reply_to=last)
    assert len(fake_engine.requests) == MAX_TURNS
    shown = await ask(world, "!describe one more?", reply_to=last)
    assert f"reached {MAX_TURNS} questions" in shown.content
    assert acknowledge_errors(world.env) == [TooManyTurns]


async def test_a_refusal_or_failure_is_not_remembered_as_an_answer(world, fake_engine):
    fake_engine.answer_next(RuntimeError("bug"))
    failed = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    acknowledge_errors(world.env)
    shown = await ask(world, "!describe why?", reply_to=failed)
    assert shown.content == str(FORGOTTEN_TEXT)
    acknowledge_errors(world.env)


async def test_answers_are_kept_under_each_of_their_messages_and_forgotten_after_the_kept_days(
    monkeypatch,
):
    database = await Database.open(":memory:")
    try:
        conversations = Conversations(database, kept_days=1)
        source = ImageSource("a.png", "https://cdn.discordapp.com/attachments/1/2/a.png", 10, None, 5, 6, 7)
        answered = Answered(Task.OCR, (source,), (Turn(None, "x"), Turn("y?", "z")), 1, True, True, 5)
        await conversations.remember([10, 11], answered)
        assert await conversations.recall(10) == answered
        assert await conversations.recall(11) == answered  # a reply to the second part follows up too
        assert await conversations.message_ids(10) == [10, 11]
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + 2 * 24 * 3600)
        with pytest.raises(UserFacingError, match="no longer have"):
            await conversations.recall(10)
    finally:
        await database.close()


def test_only_the_asker_may_follow_up_on_a_private_answer():
    answered = Answered(Task.OCR, (), (Turn(None, "x"),), asker_id=1, private=True)
    answered.check_may_follow_up(1)
    with pytest.raises(UserFacingError, match="only they can follow up"):
        answered.check_may_follow_up(2)
    Answered(Task.OCR, (), (Turn(None, "x"),), asker_id=1).check_may_follow_up(2)  # public: anyone


async def test_a_public_slash_answer_can_be_followed_up_by_reply(world, fake_engine):
    fake_engine.answer_next("A cat on a sofa.", "Grey.")
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes((12, 8))))
    answer = next(m for m in world.channel.history() if m.id == result.response.id)
    shown = await ask(world, "!describe what colour is the cat?", reply_to=answer)
    assert shown.content == "Grey."
    assert fake_engine.requests[-1].history == (Turn(None, "A cat on a sofa."),)
    assert [image.size for image in fake_engine.requests[-1].images] == [(12, 8)]


async def test_a_private_answer_is_kept_as_private(world, fake_engine):
    result = await world.member.slash(world.channel, "ocr", image=("a.png", image_bytes()))
    assert result.ephemeral
    kept = await world.env.bot.conversations.recall(result.response.id)
    assert kept.private and kept.asker_id == world.member.id and kept.task is Task.OCR


async def test_a_follow_up_on_an_ocr_answer_needs_the_ocr_role(world, fake_engine):
    moderator_role = world.guild.create_role("OCR")
    moderator = world.guild.add_member(world.env.create_user("mod"), roles=[moderator_role])
    reconfigure(world.env.bot, ocr_role_ids=frozenset({moderator_role.id}))
    await moderator.send(world.channel, "!ocr", attachments=[("shot.png", image_bytes())])
    ocr_answer = bot_messages(world.channel)[-1]
    shown = await ask(world, "!describe what does it say?", reply_to=ocr_answer)  # world.member has no role
    assert shown.content == OCR_DENIED_TEXT
    assert len(fake_engine.requests) == 1
    assert acknowledge_errors(world.env) == [Denied]


async def test_a_mention_in_reply_to_an_answer_is_a_follow_up(world, fake_engine):
    fake_engine.answer_next("A dog in the snow.", "It is a husky.")
    first = await ask(world, "!describe", attachments=[("dog.png", image_bytes())])
    bot_user = world.env.bot.user
    shown = await ask(world, f"<@{bot_user.id}> what breed is it?", reply_to=first)
    assert shown.content == "It is a husky."
    assert fake_engine.requests[-1].question == "what breed is it?"
    assert fake_engine.requests[-1].history == (Turn(None, "A dog in the snow."),)


async def test_a_mention_in_reply_to_someone_else_is_left_alone(world, fake_engine):
    photo = await world.member.send(world.channel, "my photo", attachments=[("a.png", image_bytes())])
    bot_user = world.env.bot.user
    await world.member.send(world.channel, f"<@{bot_user.id}> isn't this great?", reply_to=photo)
    assert bot_messages(world.channel) == [] and fake_engine.requests == []


async def test_a_mention_follow_up_that_fails_is_told_like_a_command(world, fake_engine):
    first = await ask(world, "!describe", attachments=[("a.png", image_bytes())])
    await forget_everything(world.env.bot)
    bot_user = world.env.bot.user
    shown = await ask(world, f"<@{bot_user.id}> and then?", reply_to=first)
    assert shown.content == str(FORGOTTEN_TEXT)
    assert acknowledge_errors(world.env) == []  # handled here, not by discord.py's error event
