"""/ocr, !ocr and the "Extract text" menu: private by default, text in code blocks, role-gated."""

from __future__ import annotations

import pytest

from bot.errors import Denied
from bot.limits import OCR_DENIED_TEXT
from bot.markdown import tables_well_formed
from bot.reply import MARKDOWN_FILENAME
from inference import Task
from tests.conftest import (
    CHANNEL_MESSAGE,
    acknowledge_errors,
    bot_messages,
    first_responses,
    image_bytes,
    reconfigure,
)

SCREENSHOT_TEXT = "Rule 1: be kind\nRule 2: ```no spam```"


async def test_slash_ocr_is_ephemeral_and_in_a_code_block(world, fake_engine):
    fake_engine.answer_next(SCREENSHOT_TEXT)

    result = await world.member.slash(world.channel, "ocr", image=("shot.png", image_bytes()))

    assert first_responses(world.env) == [(CHANNEL_MESSAGE, True)]
    assert result.ephemeral
    content = result.response.content
    assert content.startswith("```\n") and content.endswith("\n```")
    assert "Rule 1: be kind" in content
    assert content.count("```") == 2  # the fences inside the text were escaped
    assert fake_engine.requests[0].task is Task.OCR


@pytest.mark.bot_settings(ocr_public=True)
async def test_slash_ocr_can_be_made_public(world, fake_engine):
    result = await world.member.slash(world.channel, "ocr", image=("shot.png", image_bytes()))

    assert first_responses(world.env) == [(CHANNEL_MESSAGE, False)]
    assert not result.ephemeral


async def test_extract_text_menu_is_ephemeral(world, fake_engine):
    fake_engine.answer_next("STOP")
    screenshot = await world.member.send(
        world.channel, "", attachments=[("sign.jpg", image_bytes(format="JPEG"))]
    )

    result = await world.member.context_menu(world.channel, "Extract text", screenshot)

    assert result.ephemeral
    assert result.response.content == "```\nSTOP\n```"


async def test_prefix_ocr_replies_in_a_code_block(world, fake_engine):
    fake_engine.answer_next("hello")
    await world.member.send(world.channel, "!ocr", attachments=[("shot.png", image_bytes())])

    assert bot_messages(world.channel)[-1].content == "```\nhello\n```"


async def test_ocr_with_no_text_found_says_so(world, fake_engine):
    fake_engine.answer_next("")
    result = await world.member.slash(world.channel, "ocr", image=("blank.png", image_bytes()))

    assert result.response.content == "(No text found.)"


async def test_ocr_is_limited_to_the_ocr_roles(world, fake_engine):
    mods = world.guild.create_role("Mods")
    moderator = world.guild.add_member(world.env.create_user("mod"), roles=[mods])
    reconfigure(world.env.bot, ocr_role_ids=frozenset({mods.id}))

    denied = await world.member.slash(world.channel, "ocr", image=("shot.png", image_bytes()))
    allowed = await moderator.slash(world.channel, "ocr", image=("shot.png", image_bytes()))
    await world.member.send(world.channel, "!ocr", attachments=[("shot.png", image_bytes())])
    prefix_reply = bot_messages(world.channel)[-1]
    described = await world.member.slash(world.channel, "describe", image=("shot.png", image_bytes()))

    assert denied.ephemeral and denied.response.content == OCR_DENIED_TEXT
    assert allowed.response.content.startswith("```")
    assert prefix_reply.content == OCR_DENIED_TEXT
    assert described.response.content == fake_engine.default_answer  # roles only gate OCR
    assert [request.user_id for request in fake_engine.requests] == [moderator.id, world.member.id]
    assert acknowledge_errors(world.env) == [Denied, Denied]


# ---------------------------------------------------------------- Markdown

TABLE_ANSWER = "## Prices\n| Item | Price |\n|---|---|\n| Tea | 3.00 |\n| Cake |"


async def test_slash_ocr_as_markdown_renders_headings_and_draws_tables(world, fake_engine):
    fake_engine.answer_next(TABLE_ANSWER)
    result = await world.member.slash(
        world.channel, "ocr", image=("menu.png", image_bytes()), format="markdown"
    )
    assert fake_engine.requests[-1].markdown and fake_engine.requests[-1].task is Task.OCR
    assert result.response.content == (
        "## Prices\n```\nItem | Price\n-----+------\nTea  | 3.00\nCake |\n```"
    )  # not one code block: the heading renders; the short last row was padded


async def test_a_long_markdown_answer_is_a_md_file_with_well_formed_tables(world, fake_engine):
    rows = "\n".join(f"| item {n} | {n}.00 |" for n in range(200))
    fake_engine.answer_next(f"| Item | Price |\n{rows}")  # no separator line: added
    result = await world.member.slash(
        world.channel, "ocr", image=("menu.png", image_bytes()), format="markdown"
    )
    assert "attached as a file" in result.response.content
    [followup] = result.followups
    [attachment] = followup.attachments
    assert attachment.filename == MARKDOWN_FILENAME
    text = (await attachment.read()).decode()
    assert text.splitlines()[:3] == ["| Item | Price |", "| --- | --- |", "| item 0 | 0.00 |"]
    assert tables_well_formed(text)


async def test_prefix_ocr_md_and_the_markdown_menu(world, fake_engine):
    await world.member.send(world.channel, "!ocr md", attachments=[("a.png", image_bytes())])
    assert fake_engine.requests[-1].markdown
    await world.member.send(world.channel, "!ocr", attachments=[("a.png", image_bytes())])
    assert not fake_engine.requests[-1].markdown
    photo = await world.member.send(world.channel, "", attachments=[("b.png", image_bytes())])
    result = await world.member.context_menu(world.channel, "Read as Markdown", photo)
    assert result.ephemeral and fake_engine.requests[-1].markdown


async def test_prefix_ocr_with_an_unknown_format_says_which_exist(world, fake_engine):
    await world.member.send(world.channel, "!ocr pdf", attachments=[("a.png", image_bytes())])
    assert "`!ocr md`" in bot_messages(world.channel)[-1].content
    assert fake_engine.requests == []
    acknowledge_errors(world.env)


async def test_a_follow_up_on_a_markdown_answer_stays_markdown(world, fake_engine):
    fake_engine.answer_next(TABLE_ANSWER, "| Total |\n|---|\n| 7.50 |")
    await world.member.send(world.channel, "!ocr md", attachments=[("a.png", image_bytes())])
    answer = bot_messages(world.channel)[-1]
    await world.member.send(world.channel, "!ocr what is the total?", reply_to=answer)
    assert fake_engine.requests[-1].markdown and fake_engine.requests[-1].history
    assert bot_messages(world.channel)[-1].content == "```\nTotal\n-----\n7.50\n```"
