"""What a translation of a Markdown cell must keep: its formulas and its code, character for character.

A derivation translated into another language keeps exactly the same LaTeX, and code names
(`guidance_scale`, `q_sample`) stay in English. :func:`invariants` pulls both out of a cell so
that the English and the translation can be compared; :func:`prose` is what is left, the words
that the glossary check reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Invariants", "invariants", "prose", "has_cjk", "broken_lines"]

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_DISPLAY_MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$(?!\$)", re.S)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


@dataclass(frozen=True)
class Invariants:
    """The parts of a Markdown cell that a translation keeps unchanged."""

    code_blocks: tuple[str, ...]     # fenced blocks, in order
    display_math: tuple[str, ...]    # $$ ... $$, in order
    inline_math: frozenset[str]      # $ ... $ (a translation may reorder them)
    code_spans: frozenset[str]       # `...` (likewise)


def _pull(pattern: re.Pattern, text: str, group: int) -> tuple[list[str], str]:
    found = [match.group(group).strip() for match in pattern.finditer(text)]
    return found, pattern.sub(" ", text)


def _split(text: str) -> tuple[Invariants, str]:
    blocks, rest = _pull(_FENCE, text, 0)
    spans, rest = _pull(_CODE_SPAN, rest, 2)
    display, rest = _pull(_DISPLAY_MATH, rest, 1)
    inline, rest = _pull(_INLINE_MATH, rest, 1)
    return Invariants(tuple(blocks), tuple(display), frozenset(inline), frozenset(spans)), rest


def invariants(text: str) -> Invariants:
    """The fenced code blocks, display math, inline math and code spans of a Markdown text."""
    return _split(text)[0]


def prose(text: str) -> str:
    """The words of a Markdown text: code and math replaced by spaces."""
    return _split(text)[1]


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds Chinese (CJK) characters or full-width punctuation."""
    return bool(_CJK.search(text))


_BLOCK_START = ("#", "|", "-", "*", "+", ">", "$$", "```", "~~~")


def broken_lines(text: str) -> list[str]:
    """Lines of a Chinese paragraph that end where the sentence goes on (shown as a stray space).

    Markdown joins the lines of a paragraph with a space, which Chinese text does not have: a
    line ending in a Chinese character followed by a line starting with one is one sentence
    broken in two. Headings, table rows and list items end at their line and are left alone.
    """
    lines = text.splitlines()
    found = []
    for line, following in zip(lines, lines[1:]):
        if (line.strip() and following.strip() and not line.lstrip().startswith(_BLOCK_START)
                and not following.lstrip().startswith(_BLOCK_START) and has_cjk(line.rstrip()[-1])
                and has_cjk(following.lstrip()[0])):
            found.append(line.rstrip()[-12:] + "⏎" + following.lstrip()[:12])
    return found
