"""The glossary: the notes' Chinese terms, the English the lessons write for them, variants refused.

One file, ``translations/glossary.yaml``, read by three things: the glossary tables of README.md
and README.zh-CN.md (``python -m course_lib.i18n glossary --write`` renders them, a test checks
they match), and the consistency check of every translated cell (:func:`check_terms`): where the
English says "classifier-free guidance", the Chinese says 无分类器引导, never 无分类器指导.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .catalogues import ROOT, TranslationFileError, _load_yaml
from .markdown import prose

__all__ = ["Term", "GLOSSARY_PATH", "README_SECTIONS", "load_glossary", "check_terms", "readme_table",
           "readme_tables_problems", "write_readme_tables"]

GLOSSARY_PATH = ROOT / "translations" / "glossary.yaml"

# README file -> (heading of its glossary section, language of the table)
README_SECTIONS = {"README.md": ("## Glossary of the notes", "en"), "README.zh-CN.md": ("## 术语表", "zh")}


@dataclass(frozen=True)
class Term:
    """A glossary entry.

    :param zh: the Chinese term, as the notes write it
    :param zh_also: other Chinese forms accepted (the notes use both 向前扩散 and 前向过程)
    :param en: the English forms the lessons write (matched case-insensitively, plural allowed)
    :param lessons_say: README.md's column: what the lessons say, with the symbols
    :param zh_note: README.zh-CN.md's column: the meaning in a few Chinese words
    :param refuse: Chinese variants a translation must not use
    :param source: "notes" (the notes' own term) or "course" (a term the course adds)
    """

    zh: str
    zh_also: tuple[str, ...]
    en: tuple[str, ...]
    lessons_say: str
    zh_note: str
    refuse: tuple[str, ...]
    source: str

    def english_pattern(self) -> re.Pattern:
        forms = "|".join(re.escape(form) for form in sorted(self.en, key=len, reverse=True))
        return re.compile(rf"(?<![\w-])(?:{forms})(?:s|es)?(?![\w-])", re.I)


def load_glossary(path: Path = GLOSSARY_PATH) -> list[Term]:
    """Read and validate the glossary; errors name the file and the entry."""
    data = _load_yaml(path) or {}
    terms = []
    for index, entry in enumerate(data.get("terms") or []):
        where = f"{path}, terms[{index}]"
        required = {"zh", "en", "lessons_say", "zh_note", "source"}
        if not isinstance(entry, dict) or not required <= set(entry):
            raise TranslationFileError(f"{where}: an entry needs {sorted(required)} (and optionally zh_also, "
                                       f"refuse), got {entry!r}.")
        if entry["source"] not in ("notes", "course"):
            raise TranslationFileError(f"{where}: source must be 'notes' or 'course', got {entry['source']!r}.")
        as_tuple = lambda value: tuple(value) if isinstance(value, list) else (value,) if value else ()  # noqa: E731
        term = Term(zh=entry["zh"], zh_also=as_tuple(entry.get("zh_also")), en=as_tuple(entry["en"]),
                    lessons_say=entry["lessons_say"], zh_note=entry["zh_note"],
                    refuse=as_tuple(entry.get("refuse")), source=entry["source"])
        for refused in term.refuse:
            if any(refused in accepted for accepted in (term.zh, *term.zh_also)):
                raise TranslationFileError(f"{where}: the refused variant {refused!r} is part of the accepted "
                                           f"term {term.zh!r}; a translation could never use the term.")
        terms.append(term)
    if not terms:
        raise TranslationFileError(f"{path}: no terms. The glossary lists them under 'terms:'.")
    return terms


def _words(text: str) -> str:
    """The prose of a cell or a label: no code, no math, no template {fields}, no *emphasis* marks."""
    return re.sub(r"\{[^{}]*\}", " ", prose(text)).replace("*", "")


_QUOTED = re.compile(r"「[^」]*」|“[^”]*”|^>.*$", re.MULTILINE)


def unquoted(text: str) -> str:
    """``text`` without its quotations (「…」, “…” and Markdown blockquote lines): a quote of the notes
    keeps the notes' own words, variants included."""
    return _QUOTED.sub(" ", text)


def check_terms(english: str, translated: str, terms: list[Term]) -> list[str]:
    """What a translation gets wrong in the glossary's terms, one sentence each (empty: nothing).

    For every term whose English form occurs in the English prose (code and math left out), the
    translation must contain the Chinese term or an accepted form; it must never contain a
    refused variant outside a quotation (the notes' own words, quoted, stay as they are).
    """
    english_words, translated_words = _words(english), _words(translated)
    own_words = unquoted(translated)
    problems, refused_found = [], []
    for term in terms:
        match = term.english_pattern().search(english_words)
        accepted = (term.zh, *term.zh_also)
        if match and not any(form in translated_words for form in accepted):
            problems.append(f"the English says {match.group(0)!r}, the translation has no "
                            f"{' or '.join(accepted)} (glossary)")
        refused_found += [(refused, term.zh) for refused in term.refuse if refused in own_words]
    for refused, term in refused_found:
        # 无分类器指导 contains 分类器指导: name the longer variant only
        if not any(refused != longer and refused in longer for longer, _ in refused_found):
            problems.append(f"{refused!r} is a refused variant of {term!r} (glossary)")
    return problems


# ------------------------------------------------------------------------------------ README tables
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table(terms: list[Term], language: str) -> str:
    """The glossary as README.md's table (``"en"``: the notes' terms) or README.zh-CN.md's (``"zh"``: all)."""
    if language == "en":
        lines = ["| notes (中文) | the lessons say |", "|---|---|"]
        lines += [f"| {_cell(' / '.join((t.zh, *t.zh_also)))} | {_cell(t.lessons_say)} |"
                  for t in terms if t.source == "notes"]
    else:
        lines = ["| 术语 | 课程中的英文 | 含义 | 不要写成 | 来源 |", "|---|---|---|---|---|"]
        lines += [f"| {_cell(' / '.join((t.zh, *t.zh_also)))} | {_cell(', '.join(t.en))} | {_cell(t.zh_note)} | "
                  f"{_cell('、'.join(t.refuse)) or '—'} | {'笔记' if t.source == 'notes' else '课程'} |"
                  for t in terms]
    return "\n".join(lines)


def _table_span(text: str, heading: str) -> tuple[int, int] | None:
    """(start, end) character offsets of the first table in the section under ``heading``."""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return None
    section_end = text.find("\n## ", start + len(heading) + 2)
    section_end = len(text) if section_end < 0 else section_end
    match = re.search(r"^\|.*\|[ \t]*(?:\n\|.*\|[ \t]*)*", text[start:section_end], re.M)
    return (start + match.start(), start + match.end()) if match else None


def readme_tables_problems(terms: list[Term], root: Path = ROOT) -> list[str]:
    """Where README.md's or README.zh-CN.md's glossary table differs from the glossary file."""
    problems = []
    for name, (heading, language) in README_SECTIONS.items():
        path = root / name
        if not path.exists():
            problems.append(f"{name} is missing; it has a glossary table under {heading!r}.")
            continue
        text = path.read_text(encoding="utf-8")
        span = _table_span(text, heading)
        if span is None:
            problems.append(f"{name} has no table under the heading {heading!r}.")
        elif text[span[0]:span[1]] != readme_table(terms, language):
            problems.append(f"{name}: the table under {heading!r} differs from translations/glossary.yaml. "
                            f"Edit the glossary file, then run: python -m course_lib.i18n glossary --write")
    return problems


def write_readme_tables(terms: list[Term], root: Path = ROOT) -> list[Path]:
    """Replace the glossary tables of both READMEs by the glossary file's; returns the files changed."""
    changed = []
    for name, (heading, language) in README_SECTIONS.items():
        path = root / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        span = _table_span(text, heading)
        if span is None:
            raise ValueError(f"{path}: no table under the heading {heading!r}; add the heading and a "
                             f"one-line table (| a | b |) under it, then run this again.")
        new = text[:span[0]] + readme_table(terms, language) + text[span[1]:]
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
