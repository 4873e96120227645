"""Words meant for people, kept translatable: an English template and its values.

Everything the bot shows a person is either a constant marked with :func:`N_` or a :func:`T` call
(``T("Try again in {seconds} s.", seconds=5)``). Both are plain English until rendered in a language
(bot/i18n.py looks the template up in the gettext catalogs); Babel finds them for the catalogs by
these two names. Nothing here knows of Discord or of any language but English (bot/i18n.py renders them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def N_(template: str) -> str:
    """Mark a constant as a text for people (for the catalogs); it is returned as it is."""
    return template


@dataclass(frozen=True)
class Text:
    """An English template with named ``{values}``; ``str()`` renders it in English."""

    template: str
    values: dict[str, Any] = field(default_factory=dict)

    def format(self, template: str | None = None) -> str:
        """The values put into ``template`` (a translation of this one), or into the English."""
        return (template or self.template).format(**self.values)

    def __str__(self) -> str:
        return self.format()


def T(template: str, **values: Any) -> Text:
    """A text for people with values in it, translatable as a whole."""
    return Text(template, values)
