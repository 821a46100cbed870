"""Token strings for display: tokenizer artefacts removed, safe for matplotlib text.

:func:`clean_token` is plain string work (the CLI and the HTML view use it);
:func:`display_label` and :func:`display_text` also escape matplotlib's mathtext ``$``
and replace characters the plotting font has no glyph for, so that drawing a figure
never prints matplotlib's "Glyph ... missing from font(s)" warning.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

_MAX_LABEL_CHARS = 16
_SPACE_MARKERS = ("Ġ", "▁")  # GPT-2 byte-level BPE, SentencePiece
_EMPTY_TOKEN = "␣"
#: Shown instead of a character that no configured font can draw.
MISSING_GLYPH = "?"


def clean_token(token: str, mark_continuation: bool = False) -> str:
    """Remove tokenizer artefacts from a token for display.

    ``"##ing"`` (WordPiece continuation) becomes ``"ing"`` (``"-ing"`` with
    ``mark_continuation``), ``"Ġword"`` (byte-level BPE) and ``"▁word"``
    (SentencePiece) become ``"word"``, ``"Ċ"`` becomes ``"\\n"`` and a trailing
    ``"</w>"`` is dropped. A token that only held a space marker shows as ``"␣"``.

    Args:
        token (str): A token as the tokenizer spells it.
        mark_continuation (bool, optional): Prefix WordPiece continuations with "-".
            Default: False

    Returns:
        str: The cleaned token.
    """
    text = str(token)
    if text.startswith("##") and len(text) > 2:
        return ("-" if mark_continuation else "") + text[2:]
    if text.endswith("</w>") and len(text) > 4:
        text = text[:-4]
    cleaned = text.replace("Ċ", "\\n").replace("ĉ", "\\t")
    for marker in _SPACE_MARKERS:
        cleaned = cleaned.replace(marker, " ")
    cleaned = cleaned.strip(" ")
    if not cleaned and text:
        return _EMPTY_TOKEN
    return cleaned


def display_label(token: str) -> str:
    """A cleaned token, shortened to 16 characters, that matplotlib prints literally."""
    text = clean_token(token)
    if len(text) > _MAX_LABEL_CHARS:
        text = text[: _MAX_LABEL_CHARS - 1] + "…"
    return display_text(text)


def display_text(text: str) -> str:
    """``text`` with ``$`` escaped (no mathtext) and undrawable characters replaced.

    Args:
        text (str): Generated text for a matplotlib label or title.

    Returns:
        str: :func:`drawable` text with every ``$`` escaped.
    """
    return drawable(text).replace("$", r"\$")


def drawable(text: str) -> str:
    """``text`` with each character no configured font can draw shown as ``"?"``.

    Matplotlib warns ("Glyph ... missing from font(s)") when it draws such a
    character; replacing them before drawing means figures of any text save quietly.

    Args:
        text (str): Any text for a matplotlib label or title.

    Returns:
        str: The text, drawable with the current ``font.family``.
    """
    return "".join(
        ch if ch.isspace() or _has_glyph(ch) else MISSING_GLYPH for ch in text
    )


def sentence(tokens: Sequence[str], limit: int = 90) -> str:
    """The tokens as one line of words (``"##"`` pieces joined), for a figure title.

    Args:
        tokens (sequence of str): Token strings of one input.
        limit (int, optional): Longest result; longer sentences end in "…".
            Default: 90

    Returns:
        str: The sentence, not yet passed through :func:`display_text`.
    """
    words = ""
    for token in tokens:
        text = str(token)
        piece = clean_token(text)
        joined = text.startswith("##") and len(text) > 2
        words += piece if joined or not words else " " + piece
    return words if len(words) <= limit else words[: limit - 1] + "…"


def _has_glyph(char: str) -> bool:
    """Whether one of the fonts matplotlib would use for text can draw ``char``."""
    return _font_has(char, _family())


@functools.lru_cache(maxsize=4096)
def _font_has(char: str, family: tuple) -> bool:
    return any(font.get_char_index(ord(char)) != 0 for font in _text_fonts(family))


def _family() -> tuple:
    from matplotlib import rcParams

    return tuple(rcParams["font.family"])


@functools.lru_cache(maxsize=8)
def _text_fonts(family: tuple) -> tuple:
    """The font files of ``family`` (generic names expanded), as FT2Font objects."""
    from matplotlib import font_manager, rcParams
    from matplotlib.ft2font import FT2Font

    names = []
    for name in family:
        key = f"font.{name}"
        names.extend(rcParams[key] if key in rcParams else [name])
    paths = []
    for name in names:
        path: Optional[str] = (
            font_manager.findfont(
                font_manager.FontProperties(family=name), fallback_to_default=False
            )
            if _known(name)
            else None
        )
        if path and path not in paths:
            paths.append(path)
    if not paths:
        paths.append(font_manager.findfont(font_manager.FontProperties()))
    return tuple(FT2Font(path) for path in paths)


def _known(name: str) -> bool:
    from matplotlib import font_manager

    return any(font.name == name for font in font_manager.fontManager.ttflist)
