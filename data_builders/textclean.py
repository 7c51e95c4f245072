"""Untrusted text (reviews, titles, brands, descriptions, categories) made safe to tokenise, store and print.

One owner for the rules, used by the readers (counted per file:line:field) and, as a last guard, by the prompt
builder and anything that prints data to a terminal:

- ID tokens come only from the data's structure: ``item_3`` / ``user_5`` in text are rewritten to ``item-3`` /
  ``user-5`` so the added ``user_<u>``/``item_<j>`` tokens can never match inside text (they would get a node
  position and enter the graph bias); ``<|endoftext|>`` and other ``<|...|>`` markers become ``<endoftext>``
  so text never produces an EOS/special token inside the labels.
- Control characters (C0/C1, DEL, terminal escapes' ESC), bidi overrides/isolates/marks, BOMs and lone
  surrogates (which JSON can encode and UTF-8 cannot) are removed.
- A field is cut to ``MAX_TEXT_CHARS`` characters: prompts are cut to 1,024 tokens anyway, and unbounded text
  would make tokenising (and BPE training) arbitrarily slow.
"""
from __future__ import annotations

import re

MAX_TEXT_CHARS = 20_000  # far above what fits a 1,024-token prompt (~4-5 chars per token)
# Longest unbroken run a BPE trainer sees: its time grows quadratically with the longest pre-tokenised word.
MAX_BPE_RUN_CHARS = 64

_ID_PATTERN = re.compile(r"(user|item)_(?=[0-9])")
_SPECIAL_PATTERN = re.compile(r"<\|([^<>|\s]{0,64})\|>")
_BIDI_AND_MARKS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
# C0 (bar tab/newline, which whitespace collapsing turns into spaces), DEL, C1, bidi controls, lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI_AND_MARKS + "\ud800-\udfff]")
_LONG_RUN = re.compile(r"\S{%d,}" % (MAX_BPE_RUN_CHARS + 1))

# reason names (counted in ReadReport.changed / manifest prompt_stats)
CONTROL_CHARS = "control_characters_removed"
ID_TEXT = "id_token_text_rewritten"
SPECIAL_TEXT = "special_token_text_rewritten"
TRUNCATED = "text_truncated"


def clean_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> tuple[str, list[str]]:
    """``(safe text, reasons)``: reasons names each rule that changed the text (empty when none did)."""
    reasons = []
    if len(text) > max_chars:
        text = text[:max_chars]
        reasons.append(TRUNCATED)
    text, n = _CONTROL.subn("", text)
    if n:
        reasons.append(CONTROL_CHARS)
    text, n = _ID_PATTERN.subn(r"\1-", text)
    if n:
        reasons.append(ID_TEXT)
    text, n = _SPECIAL_PATTERN.subn(r"<\1>", text)
    if n:
        reasons.append(SPECIAL_TEXT)
    return text, reasons


def has_control_chars(text: str) -> bool:
    return _CONTROL.search(text) is not None


def printable(text: object) -> str:
    """For terminals: control characters shown as escapes (``\\x1b``, ``\\u202e``) instead of acting."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def split_long_runs(text: str, run: int = MAX_BPE_RUN_CHARS) -> tuple[str, int]:
    """Break unbroken runs longer than ``run`` characters with spaces (for BPE training only); returns the count."""
    count = 0

    def cut(m: re.Match) -> str:
        nonlocal count
        count += 1
        s = m.group()
        return " ".join(s[k : k + run] for k in range(0, len(s), run))

    return _LONG_RUN.sub(cut, text), count
