"""The course's translations are in step with the English: the staleness, coverage and glossary tests.

For every English notebook (``notebooks/*.ipynb``, ``app/*.ipynb``) that has a translation file in
``translations/zh/``, and for the library's messages:

- no English cell changed since it was translated (the failure shows the difference), no cell
  or label is without translation, no translation of a cell whose id is gone;
- formulas and code names are those of the English; the glossary's terms are used, its refused
  variants never;
- ``notebooks/zh/<name>.ipynb`` is the build of the English notebook and the translation file
  (the English code cells exactly, the language lines first) and is executed like the English one;
- README.md's and README.zh-CN.md's glossary tables are the glossary file's.

A notebook without a translation file is reported as xfail (not translated yet). How to fix each
failure: CONTRIBUTING.md, "Translations".
"""

from pathlib import Path

import pytest

from course_lib.i18n import template_fields
from course_lib.i18n.catalogues import library_catalogue_path, read_strings, translation_files, translation_path
from course_lib.i18n.extract import library_messages
from course_lib.i18n.glossary import check_terms, load_glossary, readme_tables_problems
from course_lib.i18n.markdown import has_cjk
from course_lib.i18n.notebooks import check, english_notebooks

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = "zh"
NOTEBOOKS = english_notebooks(ROOT)
TERMS = load_glossary()
LIBRARY = read_strings(library_catalogue_path(LANGUAGE))


def _problems(notebook: Path, kinds: set[str]) -> str:
    if not translation_path(notebook, LANGUAGE, ROOT).exists():
        pytest.xfail(f"{notebook.relative_to(ROOT)} is not translated into {LANGUAGE} yet")
    problems = [p for p in check(notebook, LANGUAGE, ROOT, TERMS, LIBRARY) if p.kind in kinds]
    return "\n\n".join(f"[{p.kind}] {p}" for p in problems)


def _ids(notebooks):
    return [path.relative_to(ROOT).as_posix() for path in notebooks]


def test_there_are_english_notebooks():
    assert len([p for p in NOTEBOOKS if p.parent.name == "notebooks"]) >= 10


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_english_notebooks_have_cell_ids(notebook):
    """Translations are keyed by nbformat 4.5 cell ids: every English notebook has them, each once."""
    problems = [p for p in check(notebook, LANGUAGE, ROOT, TERMS, LIBRARY) if p.kind == "cell-ids"]
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_translation_is_not_stale(notebook):
    problems = _problems(notebook, {"stale", "orphan", "fingerprint", "file"})
    assert not problems, problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_cell_and_label_is_translated(notebook):
    problems = _problems(notebook, {"untranslated", "string-missing", "string-unused", "string-call"})
    assert not problems, problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_translation_keeps_formulas_code_names_and_fields(notebook):
    problems = _problems(notebook, {"invariants", "string-fields", "string-math"})
    assert not problems, problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_translation_uses_the_glossary(notebook):
    problems = _problems(notebook, {"glossary"})
    assert not problems, problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_chinese_sentences_are_not_broken_over_lines(notebook):
    problems = _problems(notebook, {"line-break"})
    assert not problems, problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_translated_notebook_is_the_build_of_its_sources(notebook):
    """Same cells, the English code (language lines first), the translation's Markdown, executed, fonts present."""
    problems = _problems(notebook, {"not-built", "code", "markdown", "not-executed", "glyphs"})
    assert not problems, problems


def test_translated_folders_hold_only_built_notebooks():
    """notebooks/zh/x.ipynb exists only as the build of notebooks/x.ipynb (no lesson written in zh alone)."""
    for folder in ("notebooks", "app"):
        for path in sorted((ROOT / folder / LANGUAGE).glob("*.ipynb")):
            english = ROOT / folder / path.name
            assert english.exists(), f"{path.relative_to(ROOT)} has no English notebook {english.relative_to(ROOT)}"
            assert translation_path(english, LANGUAGE, ROOT).exists(), f"{path.relative_to(ROOT)} has no translation file"


def test_every_library_message_has_a_translation():
    used = library_messages(ROOT / "course_lib")
    missing = {message: where for message, where in used.items() if not LIBRARY.get(message)}
    assert not missing, (f"course_lib messages without a {LANGUAGE} text in course_lib/i18n/{LANGUAGE}.yaml "
                         "(python -m course_lib.i18n missing):\n"
                         + "\n".join(f"  {m!r} at {', '.join(w)}" for m, w in missing.items()))


def test_library_translations_keep_fields_and_glossary_terms():
    problems = []
    for english, translated in LIBRARY.items():
        if not translated:
            continue
        if template_fields(english) != template_fields(translated):
            problems.append(f"{translated!r}: fields {sorted(template_fields(translated))}, English "
                            f"{sorted(template_fields(english))}")
        if has_cjk(translated) and translated.count("$") >= 2:
            problems.append(f"{translated!r}: Chinese and $math$ in one label")
        problems += [f"{english!r}: {p}" for p in check_terms(english, translated, TERMS)]
    assert not problems, "\n".join(problems)


def test_a_message_is_translated_the_same_way_everywhere():
    """tr() merges the library's catalogue and every lesson's labels; one English text, one translation."""
    seen: dict[str, tuple[str, str]] = {}
    conflicts = []
    for path in [library_catalogue_path(LANGUAGE), *translation_files(LANGUAGE, ROOT / "translations")]:
        for english, translated in read_strings(path).items():
            if not translated:
                continue
            if english in seen and seen[english][0] != translated:
                conflicts.append(f"{english!r}: {seen[english][0]!r} in {seen[english][1]}, {translated!r} in "
                                 f"{path.relative_to(ROOT)}")
            seen.setdefault(english, (translated, str(path.relative_to(ROOT))))
    assert not conflicts, "\n".join(conflicts)


def test_readme_glossary_tables_are_the_glossary_file():
    problems = readme_tables_problems(TERMS, ROOT)
    assert not problems, "\n".join(problems)


def test_readmes_link_each_other():
    english = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[0]
    chinese = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8").splitlines()[0]
    assert "README.zh-CN.md" in english and "README.md" in chinese
