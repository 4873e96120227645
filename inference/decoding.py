"""From new tokens to text: what a runner step gives each request, and the text decoder behind it."""

from __future__ import annotations

from dataclasses import dataclass

# Phi-3 ends an answer with <|end|>; <|endoftext|> also stops it.
STOP_TOKENS = ("<|end|>", "<|endoftext|>")


@dataclass
class Event:
    """What one step gave one request: new text, whether it has finished, and why if it failed."""

    request_id: int
    text: str = ""
    finished: bool = False
    error: Exception | None = None
    new_tokens: int = 0


class IncrementalDecoder:
    """Token ids in, newly completed text out, decoding only the last few tokens at each push.

    Each push decodes a short window: the tokens already shown by the last piece (kept as
    context, because a tokenizer drops the leading space of a sequence's first token) plus the
    tokens not shown yet; the text past the context's own is new. So the cost per token stays
    flat however long the answer or its current line grows. A half-decoded multi-byte character
    (a trailing U+FFFD) is held back until its last byte arrives.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.context_start = 0  # the window decoded at each push starts here
        self.unread_start = 0  # tokens from here on have not been shown yet

    def push(self, token_id: int | None, final: bool = False) -> str:
        if token_id is not None:
            self.ids.append(token_id)
        context = self._decode(self.context_start, self.unread_start)
        text = self._decode(self.context_start, len(self.ids))
        if (not final and text.endswith("\ufffd")) or len(text) <= len(context):
            return ""
        self.context_start, self.unread_start = self.unread_start, len(self.ids)
        return text[len(context) :]

    def _decode(self, start: int, end: int) -> str:
        if start == end:
            return ""
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)
