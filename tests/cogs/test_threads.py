"""Threads for follow-ups, a server's choice: every message in a thread opened on an answer (or in a forum
post the bot answered in) is a follow-up, without a mention or a reply."""

from __future__ import annotations

import discord

from inference import Task
from tests.conftest import bot_messages, image_bytes


def threads_on(world, on: bool = True):
    return world.env.bot.server_settings.change(
        world.guild.id, "answer_threads", True if on else None, by=world.member.id
    )


async def test_a_public_answer_opens_a_thread_where_every_message_is_a_follow_up(world, fake_engine):
    await threads_on(world)
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    answer, opened = bot_messages(world.channel)
    assert opened.type is discord.MessageType.thread_created  # Discord's own notice in the channel
    [thread] = world.channel.threads
    assert thread.id == answer.id and thread.name == "Follow-ups: cat.png"

    await world.member.send(thread, "what colour is it?")
    await world.member.send(thread, "and how big?")
    first, second, third = fake_engine.requests
    assert second.history[0].answer == fake_engine.default_answer and second.question == "what colour is it?"
    assert [turn.question for turn in third.history] == [None, "what colour is it?"]
    assert third.question == "and how big?" and third.task is Task.DESCRIBE
    assert len(bot_messages(thread)) == 2  # the follow-ups are answered in the thread
    assert [other.id for other in world.channel.threads] == [thread.id]  # and open no threads of their own


async def test_a_slash_commands_answer_opens_a_thread_too(world, fake_engine):
    await threads_on(world)
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    [thread] = world.channel.threads
    assert thread.id == result.response.id
    await world.member.send(thread, "is it a cat?")
    assert fake_engine.requests[-1].question == "is it a cat?" and len(fake_engine.requests[-1].history) == 1


async def test_without_the_servers_choice_answers_open_no_threads(world, fake_engine):
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    assert world.channel.threads == []


async def test_private_answers_open_no_threads(world, fake_engine):
    await threads_on(world)
    result = await world.member.slash(world.channel, "ocr", image=("shot.png", image_bytes()))
    assert result.ephemeral and world.channel.threads == []


async def test_once_turned_off_messages_in_old_threads_are_just_messages(world, fake_engine):
    await threads_on(world)
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    [thread] = world.channel.threads
    await threads_on(world, on=False)
    await world.member.send(thread, "what colour is it?")
    assert len(fake_engine.requests) == 1 and bot_messages(thread) == []


async def test_in_a_forum_post_the_messages_after_an_answer_are_follow_ups(world, fake_engine):
    await threads_on(world)
    forum = world.guild.create_forum_channel("help")
    backend = world.env.backend
    post = backend.create_thread(forum.id, "What is this?", world.member.id)
    [handle] = forum.threads
    await world.member.send(handle, "just chatting before anyone asks")
    assert fake_engine.requests == []  # nothing answered yet: a message is only a message
    await world.member.send(handle, "!describe", attachments=[("bug.png", image_bytes())])
    await world.member.send(handle, "is it dangerous?")
    assert [request.question for request in fake_engine.requests] == [None, "is it dangerous?"]
    assert post.id == handle.id and [thread.id for thread in forum.threads] == [
        handle.id
    ]  # no thread inside the post
