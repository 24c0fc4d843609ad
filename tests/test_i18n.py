"""course_lib.i18n: the language setting, tr(), the translation files, building and checking translated notebooks.

The machinery is tested on small notebooks made here (each way a translation can fall out of step
is produced and must be reported); tests/test_translations.py checks the course's own translations.
"""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import nbformat
import pytest

import course_lib
from course_lib import i18n
from course_lib.i18n import tr, template_fields
from course_lib.i18n.catalogues import (CellTranslation, StringTranslation, TranslationFile, TranslationFileError,
                                        fingerprint, library_catalogue_path, read_strings, read_translation_file,
                                        translation_path, write_translation_file)
from course_lib.i18n.extract import library_messages, messages_in_code
from course_lib.i18n.glossary import (Term, check_terms, load_glossary, readme_table, readme_tables_problems,
                                      write_readme_tables)
from course_lib.i18n.markdown import broken_lines, has_cjk, invariants, prose
from course_lib.i18n.notebooks import (accept, build, check, language_lines, translated_path, update,
                                       write_notebook)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _english_afterwards():
    yield
    course_lib.set_language("en")


# ------------------------------------------------------------------------------------ the language setting
def test_english_is_the_default_and_tr_returns_the_english():
    assert course_lib.get_language() == "en"
    assert tr("✅ Correct: {what}", what="it works") == "✅ Correct: it works"
    assert tr("a message nobody translated") == "a message nobody translated"


@pytest.mark.parametrize("code", ["zh", "zh-CN", "zh_CN.UTF-8", "ZH-Hans", "chinese"])
def test_set_language_takes_the_usual_spellings_of_chinese(code):
    assert course_lib.set_language(code) == "zh"
    assert i18n.get_language() == "zh"


def test_an_unknown_language_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"Unknown language 'fr'.*'en' \(English\), 'zh' \(简体中文\)"):
        course_lib.set_language("fr")
    with pytest.raises(TypeError, match="a code such as 'zh'"):
        course_lib.set_language(None)
    assert course_lib.get_language() == "en"   # unchanged by the failed calls


def test_tr_looks_up_the_current_language_and_fills_the_fields(monkeypatch):
    table = {"Hint: {hint}": "提示：{hint}", "{count} steps": "{steps} 步"}   # the second renames its field
    course_lib.set_language("zh")
    monkeypatch.setattr(i18n, "catalogue", lambda language: table)
    assert tr("Hint: {hint}", hint="开平方") == "提示：开平方"
    assert tr("not in the catalogue") == "not in the catalogue"
    # a translated template that does not format falls back to the English one, never raises
    assert tr("{count} steps", count=3) == "3 steps"
    monkeypatch.setattr(i18n, "_language", "en")
    assert tr("Hint: {hint}", hint="x") == "Hint: x"


def test_a_message_with_braces_but_no_fields_is_returned_as_it_is():
    assert tr("ᾱ_t = ∏_{s≤t} (1 - β_s)") == "ᾱ_t = ∏_{s≤t} (1 - β_s)"
    assert template_fields("t={t:4d}, {name} {{literal}}") == {"t", "name"}


def test_a_broken_translation_file_leaves_its_messages_in_english(tmp_path, monkeypatch):
    from course_lib.i18n import catalogues

    folder = tmp_path / "zh" / "notebooks"
    folder.mkdir(parents=True)
    (folder / "good.yaml").write_text("strings:\n- en: Noise level\n  zh: 噪声水平\n", encoding="utf-8")
    (folder / "broken.yaml").write_text("strings: [\n", encoding="utf-8")
    monkeypatch.setattr(catalogues, "translation_files", lambda language: sorted(folder.glob("*.yaml")))
    course_lib.set_language("zh")
    with pytest.warns(UserWarning, match="broken.yaml: not valid YAML"):
        assert tr("Noise level") == "噪声水平"
    i18n.catalogue.cache_clear()


def test_chinese_comes_from_the_library_catalogue():
    course_lib.set_language("zh")
    library = read_strings(library_catalogue_path("zh"))
    assert tr("seed") == library["seed"] != "seed"
    assert tr("✅ Correct: {what}", what="x") == library["✅ Correct: {what}"].format(what="x")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "COURSE_LANG"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)


@pytest.mark.slow
def test_course_lang_in_the_environment_sets_the_language_at_import():
    run = _python("import course_lib; from course_lib.i18n import tr; print(course_lib.get_language(), tr('seed'))",
                  COURSE_LANG="zh_CN")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["zh", read_strings(library_catalogue_path("zh"))["seed"]]
    run = _python("import course_lib; print(course_lib.get_language())", COURSE_LANG="klingon")
    assert run.stdout.strip() == "en" and "COURSE_LANG='klingon' ignored" in run.stderr


@pytest.mark.slow
def test_chinese_figure_labels_are_drawn_with_a_chinese_font(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = list(matplotlib.rcParams["font.family"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            course_lib.set_language("zh")
        if any("No font with Chinese characters" in str(w.message) for w in caught):
            pytest.skip("no CJK font on this machine (apt-get install fonts-noto-cjk or fonts-wqy-microhei)")
        fonts = list(matplotlib.rcParams["font.family"])
        assert fonts[0] in i18n.CJK_FONTS and fonts[1:] == [f for f in family if f != fonts[0]]   # put first
        course_lib.set_language("zh")
        assert list(matplotlib.rcParams["font.family"]) == fonts      # once
        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger("matplotlib").addHandler(handler)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig, ax = plt.subplots(figsize=(3, 1))
            ax.set_title("前向过程：信噪比 −1")
            ax.set_xlabel("数据：$x_0 \\sim p_0$，精确的 $\\epsilon^*$")   # words beside mathtext: its 'default' font
            fig.savefig(tmp_path / "label.png", dpi=100)
            plt.close(fig)
        logging.getLogger("matplotlib").removeHandler(handler)
        problems = [str(w.message) for w in caught] + messages
        assert not [p for p in problems if "Glyph" in p or "glyph" in p], problems
    finally:
        matplotlib.rcParams["font.family"] = family


# ------------------------------------------------------------------------------------ translation files
TRICKY = [
    "$$\n\\bar\\alpha_t = \\prod_{s\\le t} \\alpha_s \\qquad \\nabla \\log p\n$$",
    "a line with trailing spaces   \nnext line",
    "  leading spaces\n\ttab",
    "no", "1.0", "", "key: value # not a comment", "'quoted' and \"double\"",
    "最后一行没有换行\n第二行：全角冒号", "ends with a newline\n", "\n\nstarts with blank lines",
]


def test_translation_files_round_trip_any_text(tmp_path):
    path = tmp_path / "translations" / "zh" / "notebooks" / "x.yaml"
    original = TranslationFile(
        path=path, language="zh", notebook="notebooks/x.ipynb",
        cells=[CellTranslation(id=f"c{i}", en=text, fingerprint=fingerprint(text), text=text[::-1] or None)
               for i, text in enumerate(TRICKY)],
        strings=[StringTranslation(en=text or "x", text=text) for text in TRICKY])
    write_translation_file(original)
    again = read_translation_file(path)
    assert again.language == "zh" and again.notebook == "notebooks/x.ipynb"
    assert again.cells == original.cells
    assert again.strings == [StringTranslation(en=s.en, text=s.text) for s in original.strings]
    assert "\\bar\\alpha_t" in path.read_text(encoding="utf-8")   # LaTeX readable, not escaped


def test_a_hand_written_translation_keeps_latex_exactly(tmp_path):
    path = tmp_path / "translations" / "zh" / "notebooks" / "x.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "notebook: notebooks/x.ipynb\n"
        "cells:\n"
        "- id: '12345678'\n"
        "  fingerprint: abc\n"
        "  en: |-\n"
        "    One step $\\beta_t$\n"
        "  zh: |-\n"
        "    一步 $\\beta_t$，\\bar 与 \\n 都原样保留\n"
        "strings: []\n", encoding="utf-8")
    cell = read_translation_file(path).cells[0]
    assert (cell.id, cell.en, cell.text) == ("12345678", "One step $\\beta_t$", "一步 $\\beta_t$，\\bar 与 \\n 都原样保留")


@pytest.mark.parametrize("content, message", [
    ("cells: [\n  - id: x\n", "not valid YAML"),
    ("strings:\n- en: Generate\n  zh: yes\n", "expected text, got True"),
    ("cells:\n- id: 12345678\n  fingerprint: abc\n  en: x\n", "expected text, got 12345678"),
    ("cells:\n- en: x\n", "a cell needs 'id', 'fingerprint', 'en' and 'zh'"),
    ("sentences: []\n", "unknown keys"),
])
def test_a_broken_translation_file_is_named_with_what_to_fix(tmp_path, content, message):
    path = tmp_path / "translations" / "zh" / "bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TranslationFileError, match=re.escape(message)) as error:
        read_translation_file(path)
    assert str(path) in str(error.value)


def test_fingerprint_is_the_sha256_of_the_text():
    import hashlib

    assert fingerprint("# 标题\n$x$") == hashlib.sha256("# 标题\n$x$".encode()).hexdigest()[:16]
    assert fingerprint("a") != fingerprint("a ")


# ------------------------------------------------------------------------------------ messages and Markdown
def test_messages_in_code_finds_literals_and_refuses_the_rest():
    source = ('%matplotlib inline\n!echo hi\nfrom course_lib.i18n import tr\n'
              'ax.set_title(tr("Noise level"))\nlabel = i18n.tr("t = {t}", t=3)\n'
              'bad = tr(f"t = {t}")\nworse = tr(name)\nNOTE = translatable("later")\n')
    messages, problems = messages_in_code(source)
    assert messages == ["Noise level", "t = {t}", "later"]
    assert len(problems) == 2 and "f-string" in problems[0] and "line 7" in problems[1]
    assert messages_in_code("def broken(:\n")[0] == []


def test_library_messages_are_found_with_their_place(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text('X = translatable("Later")\n\ndef f(x):\n    return tr("Hi {x}", x=x) + tr(X)\n')
    assert library_messages(tmp_path) == {"Later": ["sub/m.py:1"], "Hi {x}": ["sub/m.py:4"]}


def test_invariants_pull_out_formulas_and_code():
    text = ("Step $t$ and `q_sample`:\n$$\nx_t = \\sqrt{\\bar\\alpha_t}\\,x_0\n$$\nthen $y$, a price \\$5, and `$HOME`.\n"
            "```python\ncode = $z$\n```\n")
    found = invariants(text)
    assert found.display_math == ("x_t = \\sqrt{\\bar\\alpha_t}\\,x_0",)
    assert found.inline_math == {"t", "y"}
    assert found.code_spans == {"q_sample", "$HOME"}
    assert found.code_blocks == ("```python\ncode = $z$\n```",)
    assert "sqrt" not in prose(text) and "Step" in prose(text)
    assert has_cjk("前向过程") and has_cjk("（") and not has_cjk("forward ᾱ_t")


def test_a_chinese_sentence_broken_over_two_lines_is_found():
    assert broken_lines("方差之和：\n（代码从 0 开始）") == ["方差之和：⏎（代码从 0 开始）"]
    assert broken_lines("## 标题\n正文\n- 列表\n- 第二项\n| 表 |\n| 格 |\n公式如下：\n$$\nx\n$$\n") == []
    assert broken_lines("用 CUDA\nand MPS") == [] and broken_lines("一段。\n\n另一段。") == []


# ------------------------------------------------------------------------------------ the glossary
TERMS = [Term(zh="分类器引导", zh_also=(), en=("classifier guidance",), lessons_say="classifier guidance",
              zh_note="", refuse=("分类器指导",), source="notes"),
         Term(zh="无分类器引导", zh_also=(), en=("classifier-free guidance",), lessons_say="cfg", zh_note="",
              refuse=("无分类器指导",), source="notes"),
         Term(zh="逆向采样", zh_also=("逆向过程",), en=("reverse process",), lessons_say="reverse", zh_note="",
              refuse=(), source="course")]


def test_check_terms_wants_the_glossary_term_and_refuses_variants():
    assert check_terms("Classifier guidance adds a gradient.", "分类器引导加上一个梯度。", TERMS) == []
    assert check_terms("the *reverse* process", "*逆向*过程", TERMS) == []          # emphasis does not hide a term
    assert check_terms("`classifier guidance`", "代码名", TERMS) == []                 # code is not prose
    problems = check_terms("classifier-free guidance", "无分类器指导", TERMS)
    assert len(problems) == 2                                                          # term missing, variant used
    assert "'classifier-free guidance'" in problems[0] and "无分类器引导" in problems[0]
    assert "'无分类器指导' is a refused variant" in problems[1]                          # the longer variant only
    assert "逆向采样 or 逆向过程" in check_terms("two reverse processes", "两个过程", TERMS)[0]
    # the notes quoted in their own words: a refused variant inside a quotation is theirs, not the translation's
    quoted = "the notes' words for classifier guidance"
    assert check_terms(quoted, "笔记的说法：「分类器指导」，即分类器引导", TERMS) == []
    assert check_terms(quoted, "> 分类器指导\n\n即分类器引导", TERMS) == []
    assert "分类器指导" in " ".join(check_terms(quoted, "分类器指导，即分类器引导", TERMS))


def test_the_course_glossary_has_the_notes_terms():
    terms = {term.zh: term for term in load_glossary()}
    for zh in ["条件控制", "前向过程", "逆向采样", "分类器引导", "无分类器引导", "对抗梯度", "噪声分类器", "潜在空间",
               "潜在扩散模型", "编码器", "解码器", "文本编码器", "交叉注意力", "负面提示", "多样性", "缩放因子"]:
        assert terms[zh].source == "notes", zh
    assert "分类器指导" in terms["分类器引导"].refuse


def test_readme_tables_are_checked_and_rewritten_from_the_glossary(tmp_path):
    (tmp_path / "README.md").write_text("# X\n\n## Glossary of the notes\n\n| a | b |\n|---|---|\n\n## Next\nkept\n")
    (tmp_path / "README.zh-CN.md").write_text("# X\n\n## 术语表\n\n| a |\n\n## 下一节\n")
    problems = readme_tables_problems(TERMS, tmp_path)
    assert len(problems) == 2 and "glossary --write" in problems[0]
    assert len(write_readme_tables(TERMS, tmp_path)) == 2
    assert readme_tables_problems(TERMS, tmp_path) == []
    english = (tmp_path / "README.md").read_text()
    assert readme_table(TERMS, "en") in english and english.endswith("## Next\nkept\n")
    assert "| 逆向采样 / 逆向过程 |" not in english                                  # course terms: zh README only
    assert "| 逆向采样 / 逆向过程 | reverse process |" in (tmp_path / "README.zh-CN.md").read_text()


# ------------------------------------------------------------------------------------ building and checking
def _notebook(cells, minor=5):
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = minor
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for index, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"cell{index:04d}"
        nb.cells.append(cell)
    return nb


LESSON = [
    ("md", "# 09 · Classifier guidance\nThe *reverse* process with `q_sample`."),
    ("code", "# NBVAL_CHECK_OUTPUT\nfrom course_lib.i18n import tr\nprint(tr(\"Noise level\"))"),
    ("md", "One step:\n$$\nx_t = \\sqrt{\\alpha_t}\\,x_{t-1}\n$$\nwith $t$ and classifier guidance."),
    ("code", "x = 1"),
]
ZH = {"cell0000": "# 09 · 分类器引导\n*逆向*过程，用到 `q_sample`。",
      "cell0002": "一步：\n$$\nx_t = \\sqrt{\\alpha_t}\\,x_{t-1}\n$$\n其中有 $t$，也有分类器引导。"}


@pytest.fixture
def lesson(tmp_path):
    """A repository with one English notebook and its (untranslated) zh translation file."""
    path = tmp_path / "notebooks" / "09_x.ipynb"
    path.parent.mkdir()
    nbformat.write(_notebook(LESSON), str(path))
    update(path, "zh", tmp_path)
    return path


def _kinds(problems):
    return sorted({problem.kind for problem in problems})


def _check(path):
    return check(path, "zh", root=path.parents[1], terms=TERMS, library={})


def _translate(path, texts=ZH, strings=None):
    translation = read_translation_file(translation_path(path, "zh", path.parents[1]))
    for entry in translation.cells:
        entry.text = texts.get(entry.id, entry.text)
    for entry in translation.strings:
        entry.text = (strings or {"Noise level": "噪声水平"}).get(entry.en, entry.text)
    write_translation_file(translation)


def _build(path):
    built, problems = build(path, "zh", path.parents[1])
    assert problems == [] and built is not None
    return write_notebook(built, translated_path(path, "zh"))


def _edit(path, index, source):
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, str(path))


def test_update_starts_a_translation_file_with_every_markdown_cell_and_label(lesson):
    translation = read_translation_file(translation_path(lesson, "zh", lesson.parents[1]))
    assert [(c.id, c.en, c.text) for c in translation.cells] == [
        ("cell0000", LESSON[0][1], None), ("cell0002", LESSON[2][1], None)]
    assert translation.cells[0].fingerprint == fingerprint(LESSON[0][1])
    assert [(s.en, s.text) for s in translation.strings] == [("Noise level", None)]
    problems = _check(lesson)
    assert _kinds(problems) == ["not-built", "string-missing", "untranslated"]
    untranslated = [p for p in problems if p.kind == "untranslated"]
    assert [p.where for p in untranslated] == ["notebooks/09_x.ipynb, cell cell0000", "notebooks/09_x.ipynb, cell cell0002"]
    assert "# 09 · Classifier guidance" in untranslated[0].message          # the English to translate is shown
    built, problems = build(lesson, "zh", lesson.parents[1])
    assert built is None and _kinds(problems) == ["untranslated"]          # nothing half-built


def test_a_built_notebook_has_the_english_code_the_language_lines_and_the_translation(lesson):
    _translate(lesson)
    target = _build(lesson)
    assert target == lesson.parent / "zh" / "09_x.ipynb"
    english, built = nbformat.read(str(lesson), as_version=4), nbformat.read(str(target), as_version=4)
    assert [c.id for c in built.cells] == [c.id for c in english.cells]
    assert built.cells[1].source == language_lines("zh") + english.cells[1].source
    assert built.cells[1].source.startswith('import course_lib\ncourse_lib.set_language("zh")')
    assert built.cells[3].source == english.cells[3].source
    assert built.cells[0].source == ZH["cell0000"] and built.cells[2].source == ZH["cell0002"]
    assert built.metadata["course_lib"] == {"language": "zh", "translated_from": "../09_x.ipynb"}
    assert _check(lesson) == []


def test_a_changed_english_cell_is_stale_with_the_lesson_the_cell_and_the_difference(lesson):
    _translate(lesson)
    _build(lesson)
    _edit(lesson, 2, LESSON[2][1].replace("with $t$", "for every $t$"))
    stale = [p for p in _check(lesson) if p.kind == "stale"]
    assert len(stale) == 1 and stale[0].where == "notebooks/09_x.ipynb, cell cell0002"
    assert "-with $t$ and classifier guidance." in stale[0].message
    assert "+for every $t$ and classifier guidance." in stale[0].message
    assert "python -m course_lib.i18n accept notebooks/09_x.ipynb cell0002" in stale[0].message
    _translate(lesson, {"cell0002": ZH["cell0002"].replace("其中有 $t$", "对每个 $t$")})
    accept(lesson, ["cell0002"], "zh", lesson.parents[1])
    _build(lesson)
    assert _check(lesson) == []
    with pytest.raises(ValueError, match="has no Markdown cell 'cell0001'"):
        accept(lesson, ["cell0001"], "zh", lesson.parents[1])


def test_code_that_differs_from_the_english_is_reported(lesson):
    _translate(lesson)
    target = _build(lesson)
    _edit(target, 3, "x = 2  # edited in the translation")
    problems = _check(lesson)
    assert _kinds(problems) == ["code"] and "cell0003" in problems[0].where and "+x = 2" in problems[0].message
    _build(lesson)                                       # the build puts the English code back
    _edit(lesson, 3, "x = 3")                            # the English code changed, the translation not rebuilt
    assert _kinds(_check(lesson)) == ["code"]
    _edit(target, 0, "# 手工改过的标题")
    _build(lesson)
    _edit(target, 0, "# 手工改过的标题")
    assert _kinds(_check(lesson)) == ["markdown"]


def test_a_translation_that_changes_formulas_code_names_or_terms_is_reported(lesson):
    _translate(lesson, {"cell0000": "# 09 · 分类器指导\n*逆向*过程，用到 `q_sample_mine`。",
                        "cell0002": ZH["cell0002"].replace("\\sqrt{\\alpha_t}", "\\sqrt{\\beta_t}")})
    _build(lesson)
    problems = _check(lesson)
    assert _kinds(problems) == ["glossary", "invariants"]
    messages = "\n".join(map(str, problems))
    assert "code names" in messages and "display formulas" in messages and "'分类器指导' is a refused variant" in messages


def test_labels_missing_unused_with_other_fields_or_with_math_are_reported(lesson):
    _translate(lesson, strings={"Noise level": "噪声水平 $\\sigma$"})
    _build(lesson)
    assert _kinds(_check(lesson)) == ["string-math"]
    translation = read_translation_file(translation_path(lesson, "zh", lesson.parents[1]))
    translation.strings = [StringTranslation("Noise level", "噪声水平"), StringTranslation("t = {t}", "时间步 {step}")]
    write_translation_file(translation)
    problems = _check(lesson)
    assert _kinds(problems) == ["string-fields", "string-unused"]
    assert "{names}" in next(str(p) for p in problems if p.kind == "string-fields")
    # a label translated in the library's catalogue counts
    translation.strings = []
    write_translation_file(translation)
    assert _kinds(check(lesson, "zh", lesson.parents[1], TERMS, library={"Noise level": "噪声水平"})) == []


def test_update_moves_translations_when_cell_ids_change(lesson):
    _translate(lesson)
    _build(lesson)
    nb = nbformat.read(str(lesson), as_version=4)
    nb.cells[0].id, nb.cells[2].id = "renamed0", "renamed2"            # a notebook rebuilt with new ids,
    nb.cells[2].source = nb.cells[2].source.replace("with $t$", "with $t$ (edited)")   # one cell also edited
    nbformat.write(nb, str(lesson))
    assert _kinds(_check(lesson)) == ["code", "orphan", "untranslated"]
    translation = update(lesson, "zh", lesson.parents[1])
    entries = {entry.id: entry for entry in translation.cells}
    assert set(entries) == {"renamed0", "renamed2"}
    assert entries["renamed0"].text == ZH["cell0000"] and entries["renamed0"].en == LESSON[0][1]
    assert entries["renamed2"].text == ZH["cell0002"] and entries["renamed2"].en == LESSON[2][1]   # kept, so stale
    _build(lesson)
    assert _kinds(_check(lesson)) == ["stale"]


def test_an_unrelated_orphan_stays_in_the_file_until_a_person_removes_it(lesson):
    _translate(lesson)
    nb = nbformat.read(str(lesson), as_version=4)
    nb.cells[2].id, nb.cells[2].source = "brandnew", "Something else entirely, about samplers."
    nbformat.write(nb, str(lesson))
    translation = update(lesson, "zh", lesson.parents[1])
    assert [c.id for c in translation.cells] == ["cell0000", "brandnew", "cell0002"]
    orphan = [p for p in _check(lesson) if p.kind == "orphan"]
    assert len(orphan) == 1 and "with $t$ and classifier guidance" in orphan[0].message


def test_outputs_are_kept_while_the_code_is_the_same_and_required_when_the_english_has_them(lesson):
    nb = nbformat.read(str(lesson), as_version=4)
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = index + 1
    nbformat.write(nb, str(lesson))
    _translate(lesson)
    target = _build(lesson)
    assert _kinds(_check(lesson)) == ["not-executed"]        # the English is executed, its translation not yet
    built = nbformat.read(str(target), as_version=4)
    for index, cell in enumerate(c for c in built.cells if c.cell_type == "code"):
        cell.execution_count = index + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="噪声水平\n")]
    nbformat.write(built, str(target))
    _translate(lesson, {"cell0000": ZH["cell0000"] + "\n补充一句。"})
    assert nbformat.read(str(_build(lesson)), as_version=4).cells[1].outputs[0].text == "噪声水平\n"   # Markdown only
    _edit(lesson, 3, "x = 2")
    assert nbformat.read(str(_build(lesson)), as_version=4).cells[1].outputs == []          # code changed
    assert _kinds(_check(lesson)) == ["not-executed"]


def test_a_figure_drawn_without_a_chinese_font_is_reported(lesson):
    _translate(lesson)
    target = _build(lesson)
    built = nbformat.read(str(target), as_version=4)
    built.cells[1].outputs = [nbformat.v4.new_output(
        "stream", name="stderr", text="UserWarning: Glyph 22122 (\\N{CJK UNIFIED IDEOGRAPH-566A}) missing from font(s) DejaVu Sans.\n")]
    nbformat.write(built, str(target))
    assert _kinds(_check(lesson)) == ["glyphs"]


def test_notebooks_without_cell_ids_cannot_be_translated(tmp_path):
    path = tmp_path / "notebooks" / "old.ipynb"
    path.parent.mkdir()
    nb = _notebook(LESSON[:1], minor=4)
    for cell in nb.cells:
        del cell["id"]
    path.write_text(json.dumps(nb))
    problems = check(path, "zh", root=tmp_path, terms=TERMS, library={})
    assert _kinds(problems) == ["cell-ids", "no-translation"] and "nbformat 4.4" in problems[0].message
    with pytest.raises(ValueError, match="cell ids"):
        update(path, "zh", tmp_path)


def test_the_command_line_checks_and_explains_a_wrong_cell_id(capsys):
    from course_lib.i18n.__main__ import main

    status = main(["check", "--language", "zh", str(ROOT / "notebooks" / "00_welcome.ipynb")])
    output = capsys.readouterr().out
    count = int(output.strip().splitlines()[-1].split()[0])          # the last line: "N problem(s)"
    assert status == (1 if count else 0)
    assert main(["accept", str(ROOT / "notebooks" / "00_welcome.ipynb"), "no-such-cell"]) == 2
    assert "has no Markdown cell 'no-such-cell'" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "course_lib.i18n", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "build" in run.stdout and "accept" in run.stdout


# ------------------------------------------------------------------------------------ make lab LANG=zh
def _make(*args) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    run = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    return run.stdout + run.stderr


def test_make_lab_and_app_take_the_language():
    assert "--notebook-dir=notebooks/zh" in _make("lab", "LANG=zh")
    assert "translations/jupyterlab/zh" in _make("lab", "LANG=zh")
    assert "--notebook-dir=notebooks/zh" in _make("lab", "COURSE_LANG=zh")
    english = _make("lab")
    assert "--notebook-dir=notebooks " in english + " " and "app_settings_dir" not in english
    assert "app/zh/guidance_explorer.ipynb" in _make("app", "LANG=zh")
    assert "app/guidance_explorer.ipynb" in _make("app")
    assert "the course speaks en (the default) and zh" in _make("lab", "LANG=fr")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_locale(extra: list[str], user_settings: Path) -> tuple[str, dict]:
    """Start JupyterLab headless with ``extra`` arguments; return the locale its settings give and its language packs."""
    port, token = _free_port(), "i18n-test"
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}",
               f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
               f"--LabApp.user_settings_dir={user_settings}", *extra]   # no learner's own choice of language
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def get(path):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        deadline = time.monotonic() + 90
        while True:
            try:
                settings = get("/lab/api/settings/@jupyterlab/translation-extension:plugin")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"JupyterLab did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        locale = settings["settings"].get("locale") or settings["schema"]["properties"]["locale"]["default"]
        return locale, get("/lab/api/translations/")["data"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_make_lab_lang_zh_opens_jupyterlab_in_chinese(tmp_path):
    """The exact arguments of  make lab LANG=zh  give JupyterLab the zh_CN locale; plain  make lab  does not."""
    zh_arguments = re.search(r"jupyter lab (.*)", _make("lab", "LANG=zh")).group(1).split()
    locale, packs = _lab_locale(zh_arguments, tmp_path)
    assert locale == "zh_CN"
    assert "zh_CN" in packs, f"the language pack jupyterlab-language-pack-zh-cn is not installed: {packs}"
    english_arguments = re.search(r"jupyter lab (.*)", _make("lab")).group(1).split()
    assert _lab_locale(english_arguments, tmp_path)[0] == "default"
