"""Text cleaning: Unicode NFC, control characters, HTML tags and entities, whitespace.

Classification text is collapsed to single spaces (line breaks carry no label signal). Chat
content keeps its line structure and indentation (answers hold lists and code); only trailing
spaces, runs of blank lines and runs of spaces inside a line are collapsed.
"""

from __future__ import annotations

import html
import re
import unicodedata

# C0/C1 controls except tab and the line breaks \n, \r, NEL (handled as whitespace), plus invisible
# format characters that only confuse a tokenizer (zero-width space, word joiner, BOM, bidi marks).
# ZWJ/ZWNJ stay: scripts and emoji need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060\ufeff]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
# Only well-formed tags count: "a < b" or "x<y" in plain text must survive.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--.*?-->|<!DOCTYPE[^>]*>", re.DOTALL | re.IGNORECASE)
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_BLOCK = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
# Runs of whitespace other than newline (tabs, NBSP, ...) after the indentation of a line.
_INNER_SPACES = re.compile(r"(?<=\S)[^\S\n]+")
_TRAILING = re.compile(r"[^\S\n]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def strip_html(text: str) -> str:
    """Remove HTML tags (and script/style bodies) and decode entities; block ends become line breaks.

    >>> strip_html("<p>Fish &amp; chips</p><br>x < y")
    'Fish & chips\\n\\nx < y'
    """
    if "<" in text:
        text = _SCRIPT.sub("", text)
        text = _BLOCK.sub("\n", text)
        text = _TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return text


def clean_text(text: str, *, html_tags: bool = True, keep_lines: bool = False) -> str:
    """Normalise one text: NFC, no control characters, optional HTML stripping, tidy whitespace.

    Args:
        text: The raw text.
        html_tags: Remove HTML tags and decode entities.
        keep_lines: Keep line breaks and leading indentation (chat content); otherwise collapse all
            whitespace to single spaces (classification text).

    Returns:
        The cleaned text, trimmed; it may be empty.

    >>> clean_text("  Caf\\u0065\\u0301 <b>menu</b>\\t\\x07 ok ")
    'Café menu ok'
    """
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if html_tags:
        # Entities can decode to controls or odd spaces, so strip HTML before the other steps.
        text = strip_html(text)
    text = _CONTROL.sub("", text)
    if not keep_lines:
        return " ".join(text.split())  # split() also breaks at \r, \u2028 and other line separators
    text = _LINE_BREAKS.sub("\n", text)
    text = _INNER_SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalise_for_key(text: str) -> str:
    """The form two texts share when they are "the same" for deduplication: case-folded, single-spaced.

    >>> normalise_for_key("Hello,   WORLD")
    'hello, world'
    """
    return " ".join(text.casefold().split())

