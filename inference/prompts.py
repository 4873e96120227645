"""The prompts for each task, in Phi-3's chat format, built in one place.

User text is untrusted: it can never add chat control tokens (``<|end|>``,
``<|assistant|>``...), sentence markers (``<s>``) or image tags
(``<|image_7|>``). Those are broken up so the tokenizer reads them as plain
text, and the prompt always has exactly one image tag per image, numbered
1..N in order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from inference.errors import (
    InvalidRequest,
    NoImage,
    QuestionNeeded,
    QuestionTooLong,
    TooFewImages,
    TooManyImages,
    TooManyTurns,
)
from inference.types import Media, Task, Turn

MAX_QUESTION_CHARS = 1000
MIN_COMPARE_IMAGES = 2
MAX_TURNS = 8  # questions in one conversation, the first included

DESCRIBE = "Describe this image in detail."
OCR = (
    "Transcribe all of the text in this image exactly as written, keeping the original line breaks. "
    "Output only the text itself. If the image contains no text, answer exactly: No text found."
)
OCR_MARKDOWN = (
    "Transcribe all of the text in this image as Markdown. Write tables as Markdown pipe tables with a "
    "header row, headings as Markdown headings, and lists as Markdown lists; keep every word exactly as "
    "written and add nothing of your own. If the image contains no text, answer exactly: No text found."
)
ALT_TEXT = (
    "Write alt text for this image for a person who cannot see it. Use one or two short sentences. "
    "Start with what matters most, and do not begin with 'Image of' or 'Picture of'. If the image "
    "contains text, say in a few words what the text is about."
)
COMPARE = (
    "Compare these {count} images. Say what they have in common and how they differ, "
    "referring to them as Image 1, Image 2 and so on."
)

# Said before the task when the pictures are pages of one document or frames of one animation or video.
PAGES = "The {count} images are pages of one document, in order: {labels}."
FRAMES = "The {count} images are frames of one animation or video, in order, taken at {labels}."
DESCRIBE_PAGES = "Describe this document: what it is, who it is from and to, and what it says or asks."
DESCRIBE_FRAMES = "Describe what happens in it, from the first frame to the last."
ANSWER_LANGUAGE = " Answer in {language}."  # describe and compare; OCR keeps the text as written
OCR_SEVERAL = " Begin each {unit}'s text with a line naming it, for example: {example}."

# Anything shaped like a chat control token or image tag: <|...|>, plus the sentence markers.
_CONTROL_TOKEN = re.compile(r"<\s*\|([^<>]*?)\|\s*>")
_SENTENCE_MARKER = re.compile(r"<\s*(/?)\s*(s|unk)\s*>", re.IGNORECASE)


def neutralise(text: str) -> str:
    """Make user text safe to place inside a prompt: no control tokens, no control characters."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    # "<|end|>" becomes "<end>": still readable, no longer a token the tokenizer knows.
    text = _CONTROL_TOKEN.sub(lambda m: f"<{m.group(1).strip()}>", text)
    text = _SENTENCE_MARKER.sub(lambda m: f"‹{m.group(1)}{m.group(2)}›", text)
    # Leftover halves ("<|" or "|>") cannot join with our own tokens either.
    return text.replace("<|", "< |").replace("|>", "| >").strip()


def clean_question(question: str | None) -> str | None:
    if question is None:
        return None
    question = neutralise(question)
    if not question:
        return None
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionTooLong(len(question), MAX_QUESTION_CHARS)
    return question


def image_tags(count: int, labelled: bool = False) -> str:
    if labelled:
        return "".join(f"Image {i}: <|image_{i}|>\n" for i in range(1, count + 1))
    return "".join(f"<|image_{i}|>\n" for i in range(1, count + 1))


def check_image_count(count: int, max_images: int, task: Task | None = None) -> None:
    """The limits every engine puts on how many images one request carries: at least one, at least
    :data:`MIN_COMPARE_IMAGES` to compare, at most ``max_images``."""
    if count < 1:
        raise NoImage()
    if task is Task.COMPARE and count < MIN_COMPARE_IMAGES:
        raise TooFewImages(count, MIN_COMPARE_IMAGES)
    if count > max_images:
        raise TooManyImages(count, max_images)


def instruction(
    task: Task,
    num_images: int,
    question: str | None = None,
    *,
    markdown: bool = False,
    media: Media = Media.PICTURES,
    labels: Sequence[str] = (),
    language: str | None = None,
) -> str:
    """The text of the user's turn for ``task``: no chat wrapper and no image tags.

    For servers that place the images themselves (an OpenAI-compatible chat API
    such as vLLM's inserts Phi-3's ``<|image_N|>`` tags for each ``image_url``
    part). The question is neutralised exactly as in :func:`build_prompt`. ``markdown`` asks an OCR
    answer to be Markdown (tables, headings, lists). Pages of a document or frames of a video
    (``media``) are said to be so first, with their ``labels`` (page numbers, times). A ``language`` asks
    a description or a comparison in that language (an OCR answer stays in the text's own).
    """
    text = _instruction(task, num_images, question, markdown, media, labels)
    if language and task in (Task.DESCRIBE, Task.COMPARE):
        text += ANSWER_LANGUAGE.format(language=neutralise(language))
    return text


def _instruction(
    task: Task, num_images: int, question: str | None, markdown: bool, media: Media, labels: Sequence[str]
) -> str:
    if num_images < 1:
        raise NoImage()
    question = clean_question(question)
    if task in (Task.DESCRIBE, Task.OCR) and media is not Media.PICTURES:
        return f"{_about(media, num_images, labels)} {_task_text(task, question, markdown, media)}"
    if task is Task.DESCRIBE:
        return question or DESCRIBE
    if task is Task.OCR:
        return OCR_MARKDOWN if markdown else OCR
    if task is Task.ALT_TEXT:
        return ALT_TEXT
    if task is Task.COMPARE:
        if num_images < MIN_COMPARE_IMAGES:
            raise TooFewImages(num_images, MIN_COMPARE_IMAGES)
        text = COMPARE.format(count=num_images)
        if question:
            text += f" Then answer this question: {question}"
        return text
    raise InvalidRequest(f"Unknown task {task!r}")


def _about(media: Media, count: int, labels: Sequence[str]) -> str:
    """The sentence that says what the pictures are: pages or frames, with their labels."""
    named = ", ".join(neutralise(label) for label in labels) if labels else "unlabelled"
    return (PAGES if media is Media.PAGES else FRAMES).format(count=count, labels=named)


def _task_text(task: Task, question: str | None, markdown: bool, media: Media) -> str:
    """Describe or OCR over pages or frames: the question, else the task's own words for them."""
    if task is Task.OCR:
        unit, example = ("page", "Page 2") if media is Media.PAGES else ("frame", "Frame 2")
        text = (OCR_MARKDOWN if markdown else OCR).replace("this image", "these images")
        return text + OCR_SEVERAL.format(unit=unit, example=example)
    return question or (DESCRIBE_PAGES if media is Media.PAGES else DESCRIBE_FRAMES)


def conversation(
    task: Task,
    num_images: int,
    question: str | None = None,
    history: Sequence[Turn] = (),
    *,
    markdown: bool = False,
    left_out: int = 0,
    media: Media = Media.PICTURES,
    labels: Sequence[str] = (),
    language: str | None = None,
) -> list[tuple[str, str]]:
    """The turns as (role, text), oldest first, without image tags; every text neutralised.

    Without ``history`` this is one user turn, :func:`instruction`. With it, the first turn is the
    task's instruction (with that turn's question), then the model's answers and the follow-up
    questions alternate, and the new ``question`` (required) comes last.

    ``left_out`` drops that many of the oldest follow-up exchanges (question and answer together,
    so every answer still follows its own question) to fit a conversation into the model's memory;
    the first exchange stays, as it carries the images and the task.
    """
    if not history:
        return [
            (
                "user",
                instruction(
                    task,
                    num_images,
                    question,
                    markdown=markdown,
                    media=media,
                    labels=labels,
                    language=language,
                ),
            )
        ]
    check_turn_count(len(history) + 1)
    first, *later = history
    turns = [
        (
            "user",
            instruction(
                task,
                num_images,
                first.question,
                markdown=markdown,
                media=media,
                labels=labels,
                language=language,
            ),
        ),
        ("assistant", neutralise(first.answer)),
    ]
    for turn in later[left_out:]:
        turns += [("user", _follow_up(turn.question)), ("assistant", neutralise(turn.answer))]
    return [*turns, ("user", _follow_up(question))]


def droppable_turns(history: Sequence[Turn]) -> int:
    """How many exchanges :func:`conversation` may leave out (all but the first)."""
    return max(len(history) - 1, 0)


def check_turn_count(questions: int) -> None:
    """The limit every engine puts on a conversation's length (its questions, the first included)."""
    if questions > MAX_TURNS:
        raise TooManyTurns(MAX_TURNS)


def _follow_up(question: str | None) -> str:
    cleaned = clean_question(question)
    if cleaned is None:
        raise QuestionNeeded()
    return cleaned


def build_prompt(
    task: Task,
    num_images: int,
    question: str | None = None,
    history: Sequence[Turn] = (),
    *,
    markdown: bool = False,
    left_out: int = 0,
    media: Media = Media.PICTURES,
    labels: Sequence[str] = (),
    language: str | None = None,
) -> str:
    """The full prompt for ``task`` over ``num_images`` images: one question, or a conversation.

    The image tags open the first user turn, so they keep their numbering however long it grows.
    """
    turns = conversation(
        task,
        num_images,
        question,
        history,
        markdown=markdown,
        left_out=left_out,
        media=media,
        labels=labels,
        language=language,
    )
    tags = image_tags(num_images, labelled=task is Task.COMPARE)
    text = "".join(
        f"<|{role}|>\n{tags if index == 0 else ''}{content}<|end|>\n"
        for index, (role, content) in enumerate(turns)
    )
    return text + "<|assistant|>\n"
