"""The translated notebooks: built from the English notebook plus its translation file, and checked.

``notebooks/01_forward_diffusion.ipynb`` + ``translations/zh/notebooks/01_forward_diffusion.yaml``
-> ``notebooks/zh/01_forward_diffusion.ipynb`` (and ``app/x.ipynb`` -> ``app/zh/x.ipynb``):

- every Markdown cell is replaced by its translation, found by cell id (nbformat 4.5 ids);
- the code cells are the English ones, character for character, except the first, which starts
  with the language lines (:func:`language_lines`): one source for the code;
- cell ids, order and metadata are the English notebook's;
- the outputs of the previous build are kept when its code cells were the same, otherwise the
  notebook is left unexecuted and ``build --execute`` (``make translations``) runs it.

:func:`check` lists everything that is out of step, as :class:`Problem` objects whose ``kind``
the tests select: an English cell changed since its translation (with the difference shown), a
cell or a label without translation, formulas or code names changed in translation, a glossary
term missing or a refused variant used, a translated notebook that is not the build of its
sources or not executed.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from . import template_fields
from .catalogues import (ROOT, CellTranslation, StringTranslation, TranslationFile, TranslationFileError,
                         fingerprint, library_catalogue_path, read_strings, read_translation_file,
                         translation_path, write_translation_file)
from .extract import messages_in_code
from .glossary import Term, check_terms
from .markdown import broken_lines, has_cjk, invariants

__all__ = ["ENGLISH_FOLDERS", "Problem", "KINDS", "language_lines", "english_notebooks", "translated_path",
           "build", "write_notebook", "execute", "needs_execution", "check", "update", "accept"]

ENGLISH_FOLDERS = ("notebooks", "app")   # folders of English notebooks that may have translations

# the comment on the language line, in the language it switches to
_LANGUAGE_COMMENT = {"zh": "中文版：课程库打印的判定、提示和图中的文字都用中文"}

# what matplotlib logs when a label has a character its fonts lack
_MISSING_GLYPH = ("missing from font", "does not have a glyph")


def language_lines(language: str) -> str:
    """The lines a translated notebook's first code cell starts with (the only code that differs)."""
    comment = _LANGUAGE_COMMENT.get(language, "")
    return f'import course_lib\ncourse_lib.set_language("{language}")' + (f"  # {comment}" if comment else "") + "\n\n"


@dataclass(frozen=True)
class Problem:
    """Something out of step. ``kind`` is one of :data:`KINDS`; ``where`` names the file and the cell."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


KINDS = {
    "cell-ids": "the English notebook lacks nbformat 4.5 cell ids, or has one twice",
    "no-translation": "the English notebook has no translation file yet",
    "file": "the translation file cannot be read",
    "untranslated": "a Markdown cell has no translation",
    "stale": "the English cell changed since it was translated",
    "orphan": "a translation whose cell id the English notebook no longer has",
    "fingerprint": "a fingerprint that is not the hash of the English stored with it",
    "invariants": "the translation changed a formula or a code name",
    "glossary": "a glossary term missing, or a refused variant used",
    "line-break": "a Chinese sentence broken over two lines (Markdown shows a space there)",
    "string-missing": "a label passed to tr(...) has no translation",
    "string-unused": "a translated label no code cell passes to tr(...)",
    "string-fields": "a translated template whose {fields} differ from the English",
    "string-math": "a Chinese label with $math$, which matplotlib cannot draw",
    "string-call": "tr(...) called without a literal string",
    "not-built": "the translated notebook is missing",
    "code": "the translated notebook's code cells are not the English ones",
    "markdown": "the translated notebook's Markdown is not its translation file's",
    "not-executed": "the translated notebook has code cells without outputs",
    "glyphs": "a figure of the translated notebook lacked a font for its characters",
}


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def english_notebooks(root: Path = ROOT) -> list[Path]:
    """The English notebooks that may be translated (``notebooks/*.ipynb``, ``app/*.ipynb``)."""
    return sorted(path for folder in ENGLISH_FOLDERS for path in (root / folder).glob("*.ipynb"))


def translated_path(notebook: Path, language: str) -> Path:
    """``notebooks/01_x.ipynb`` -> ``notebooks/<language>/01_x.ipynb``."""
    return Path(notebook).parent / language / Path(notebook).name


def _read(path: Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def _translatable(cell) -> bool:
    return cell.cell_type == "markdown" and cell.source.strip() != ""


def _cell_id_problems(nb, where: str) -> list[Problem]:
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        return [Problem("cell-ids", where, f"nbformat {nb.nbformat}.{nb.nbformat_minor} has no cell ids; translations "
                        f"are keyed by them. Save it once with JupyterLab 4 (nbformat 4.5) and commit that.")]
    ids = [cell.get("id") for cell in nb.cells]
    if None in ids or "" in ids:
        return [Problem("cell-ids", where, "a cell has no id; save the notebook with JupyterLab 4 (nbformat 4.5).")]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    return [Problem("cell-ids", where, f"cell ids used twice: {twice}; give each cell its own id.")] if twice else []


def _code_sources(nb) -> list[tuple[str, str]]:
    return [(cell.get("id"), cell.source) for cell in nb.cells if cell.cell_type == "code"]


def _load_translation(notebook: Path, language: str, root: Path, where: str) -> tuple[TranslationFile | None, list[Problem]]:
    path = translation_path(notebook, language, root)
    if not path.exists():
        return None, [Problem("no-translation", where, f"no {_relative(path, root)} yet. Start it with: "
                              f"python -m course_lib.i18n update {_relative(notebook, root)} --language {language}")]
    try:
        return read_translation_file(path, language), []
    except TranslationFileError as error:
        return None, [Problem("file", where, str(error))]


def _open(notebook: Path, language: str, root: Path):
    """(the notebook's name, the English notebook, its translation or None, problems reading them)."""
    where = _relative(notebook, root)
    english = _read(notebook)
    translation, file_problems = _load_translation(notebook, language, root, where)
    return where, english, translation, _cell_id_problems(english, where) + file_problems


# ------------------------------------------------------------------------------------ building
def build(notebook: Path, language: str = "zh", root: Path = ROOT):
    """(translated notebook or None, problems that prevent building it).

    Keeps the outputs of the existing translated notebook when its code cells are the new ones.
    """
    notebook = Path(notebook)
    where, english, translation, problems = _open(notebook, language, root)
    if problems:
        return None, problems
    for cell in english.cells:
        entry = translation.cell(cell.id) if _translatable(cell) else None
        if _translatable(cell) and (entry is None or not entry.text):
            problems.append(Problem("untranslated", f"{where}, cell {cell.id}",
                                    f"no {language} text in {_relative(translation.path, root)}; the English:\n"
                                    + _indent(cell.source)))
    if problems:
        return None, problems

    built = copy.deepcopy(english)
    first_code = True
    for cell in built.cells:
        if cell.cell_type == "code":
            if first_code:
                cell.source = language_lines(language) + cell.source
                first_code = False
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        elif _translatable(cell):
            cell.source = translation.cell(cell.id).text
    built.metadata.pop("widgets", None)
    built.metadata["course_lib"] = {"language": language, "translated_from": f"../{notebook.name}"}

    previous_path = translated_path(notebook, language)
    if previous_path.exists():
        previous = _read(previous_path)
        if _code_sources(previous) == _code_sources(built):   # same code: its outputs still hold
            outputs = {cell.id: cell for cell in previous.cells if cell.cell_type == "code"}
            for cell in built.cells:
                if cell.cell_type == "code":
                    cell.outputs = outputs[cell.id].outputs
                    cell.execution_count = outputs[cell.id].execution_count
                    if "execution" in outputs[cell.id].metadata:
                        cell.metadata["execution"] = outputs[cell.id].metadata["execution"]
            if "widgets" in previous.metadata:
                built.metadata["widgets"] = previous.metadata["widgets"]
    return built, []


def write_notebook(nb, path: Path) -> Path:
    """Write a notebook atomically, as Jupyter writes it (one-space indent, a final newline)."""
    import nbformat

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, nbformat.writes(nb) + "\n")


def execute(path: Path, timeout: int = 600) -> Path:
    """Run a notebook top to bottom in its own folder (like ``jupyter nbconvert --execute --inplace``)."""
    from nbclient import NotebookClient

    nb = _read(path)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    return write_notebook(nb, path)


def needs_execution(notebook: Path, built) -> bool:
    """Whether a freshly built translation must be run: its English notebook is executed, it is not."""
    return _executed(_read(notebook)) and not _executed(built)


def _executed(nb) -> bool:
    """Whether every code cell ran (the lessons are committed executed; the explorer app is not)."""
    return all(cell.execution_count is not None for cell in nb.cells
               if cell.cell_type == "code" and cell.source.strip())


# ------------------------------------------------------------------------------------ checking
def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), "English when translated", "English now",
                                 lineterm="", n=1)
    return _indent("\n".join(lines))


def _invariant_problems(english: str, translated: str) -> list[str]:
    before, after = invariants(english), invariants(translated)
    problems = []
    if before.display_math != after.display_math:
        problems.append("the display formulas ($$...$$) differ from the English: keep each one as it is, in order"
                        + _missing_extra(before.display_math, after.display_math))
    if before.inline_math != after.inline_math:
        problems.append("the inline formulas ($...$) differ from the English" + _missing_extra(before.inline_math,
                                                                                                after.inline_math))
    if before.code_spans != after.code_spans:
        problems.append("the code names (`...`) differ from the English; code stays in English"
                        + _missing_extra(before.code_spans, after.code_spans))
    if before.code_blocks != after.code_blocks:
        problems.append("the fenced code blocks differ from the English; code stays in English")
    return problems


def _missing_extra(before, after) -> str:
    missing = [item for item in before if item not in after]
    extra = [item for item in after if item not in before]
    return (f"; missing {missing}" if missing else "") + (f"; not in the English {extra}" if extra else "")


def check(notebook: Path, language: str = "zh", root: Path = ROOT, terms: list[Term] | None = None,
          library: dict[str, str | None] | None = None) -> list[Problem]:
    """Everything out of step between an English notebook, its translation file and its translated notebook.

    :param terms: the glossary (None: no glossary check)
    :param library: the library's catalogue for ``language`` (a label may be translated there)
    """
    notebook = Path(notebook)
    where, english, translation, problems = _open(notebook, language, root)
    if translation is None:
        return problems
    file_name = _relative(translation.path, root)
    if library is None:
        path = library_catalogue_path(language)
        library = read_strings(path) if path.exists() else {}

    # the Markdown cells
    current = {cell.id: cell.source for cell in english.cells if _translatable(cell)}
    for entry in translation.cells:
        at = f"{where}, cell {entry.id}"
        if entry.fingerprint != fingerprint(entry.en):
            problems.append(Problem("fingerprint", at, f"in {file_name} the fingerprint {entry.fingerprint} is not "
                                    f"that of the English stored with it ({fingerprint(entry.en)}); never edit `en` "
                                    f"or `fingerprint` by hand: python -m course_lib.i18n accept {where} {entry.id}"))
        if entry.id not in current:
            problems.append(Problem("orphan", at, f"{file_name} translates a cell the English notebook no longer "
                                    f"has. Move the translation to the cell that replaced it (or delete it); the "
                                    f"English it translated:\n" + _indent(entry.en)))
            continue
        if entry.text and fingerprint(current[entry.id]) != entry.fingerprint:
            problems.append(Problem("stale", at, f"the English changed since it was translated ({file_name}). "
                                    f"Update the {language} text, then run: python -m course_lib.i18n accept "
                                    f"{where} {entry.id}\n" + _diff(entry.en, current[entry.id])))
        if entry.text:
            for message in _invariant_problems(entry.en, entry.text):
                problems.append(Problem("invariants", at, message))
            for message in check_terms(entry.en, entry.text, terms or []):
                problems.append(Problem("glossary", at, message))
            for place in broken_lines(entry.text):
                problems.append(Problem("line-break", at, f"a line break inside a Chinese sentence ({place}) "
                                        "shows as a space; join the two lines"))
    for cell_id, source in current.items():
        entry = translation.cell(cell_id)
        if entry is None or not entry.text:
            problems.append(Problem("untranslated", f"{where}, cell {cell_id}", f"no {language} text in {file_name}"
                                    + ("" if entry else f" (add the cell: python -m course_lib.i18n update {where})")
                                    + "; the English:\n" + _indent(source)))

    # the labels passed to tr(...)
    used: list[str] = []
    for cell in english.cells:
        if cell.cell_type == "code":
            messages, call_problems = messages_in_code(cell.source)
            used += messages
            problems += [Problem("string-call", f"{where}, cell {cell.id}", p) for p in call_problems]
    strings = translation.string_map()
    for message in dict.fromkeys(used):
        if not (strings.get(message) or library.get(message)):
            problems.append(Problem("string-missing", where, f"tr({message!r}) has no {language} text in {file_name}"
                                    f" (python -m course_lib.i18n update {where} adds it)"))
    for entry in translation.strings:
        if entry.en not in used:
            problems.append(Problem("string-unused", where, f"{file_name} translates {entry.en!r}, which no code cell "
                                    f"passes to tr(...); delete it"))
        problems += _string_problems(entry, where, file_name, terms)

    # the translated notebook
    built_path = translated_path(notebook, language)
    at = _relative(built_path, root)
    if not built_path.exists():
        problems.append(Problem("not-built", at, "missing; run: make translations"))
        return problems
    built = _read(built_path)
    expected = [(cell.get("id"), cell.cell_type) for cell in english.cells]
    if [(cell.get("id"), cell.cell_type) for cell in built.cells] != expected:
        problems.append(Problem("code", at, f"its cells (ids, types, order) are not those of {where}; "
                                "run: make translations"))
        return problems
    first_code = True
    for original, cell in zip(english.cells, built.cells):
        if cell.cell_type == "code":
            want = (language_lines(language) if first_code else "") + original.source
            first_code = False
            if cell.source != want:
                problems.append(Problem("code", f"{at}, cell {cell.id}", "the code is not the English cell's"
                                        + (" (with the language lines first)" if want != original.source else "")
                                        + "; never edit a translated notebook's code: run make translations\n"
                                        + _indent("\n".join(difflib.unified_diff(want.splitlines(), cell.source.splitlines(),
                                                                                 "expected", "found", lineterm="", n=1)))))
        elif _translatable(original):
            entry = translation.cell(cell.id)
            if entry and entry.text and cell.source != entry.text:
                problems.append(Problem("markdown", f"{at}, cell {cell.id}", f"is not the text of {file_name}: run "
                                        "make translations (translate in that file; edits made in the notebook "
                                        "itself are overwritten)"))
    if _executed(english) and not _executed(built):   # committed with outputs, like its English notebook
        problems.append(Problem("not-executed", at, "has code cells that never ran; run: make translations"))
    for cell in built.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            if any(sign in text for sign in _MISSING_GLYPH):
                problems.append(Problem("glyphs", f"{at}, cell {cell.id}", "a figure was drawn without a font for "
                                        "its characters (install a CJK font, e.g. fonts-noto-cjk, and re-run make "
                                        "translations; matplotlib cannot draw Chinese inside $math$ labels):\n"
                                        + _indent(text.strip().splitlines()[0])))
                break
    return problems


def _string_problems(entry: StringTranslation, where: str, file_name: str, terms: list[Term] | None) -> list[Problem]:
    if not entry.text:
        return []
    problems = []
    if template_fields(entry.text) != template_fields(entry.en):
        problems.append(Problem("string-fields", where, f"{file_name}: {entry.text!r} has the fields "
                                f"{sorted(template_fields(entry.text))}, the English {entry.en!r} has "
                                f"{sorted(template_fields(entry.en))}; use the same {{names}}"))
    if has_cjk(entry.text) and entry.text.count("$") >= 2:
        problems.append(Problem("string-math", where, f"{file_name}: {entry.text!r} mixes Chinese and $math$; "
                                "matplotlib draws such a label with its math fonts, which have no Chinese. Write the "
                                "symbol in Unicode (ᾱ_t) or put the words in another label."))
    for message in check_terms(entry.en, entry.text, terms or []):
        problems.append(Problem("glossary", where, f"{file_name}, label {entry.en!r}: {message}"))
    return problems


# ------------------------------------------------------------------------------------ updating
def update(notebook: Path, language: str = "zh", root: Path = ROOT) -> TranslationFile:
    """Create or update a notebook's translation file: new cells and labels added (untranslated), nothing lost.

    A translation whose cell id disappeared moves to the new cell with the same English (same
    fingerprint), else to the most similar untranslated new cell, where it shows as stale with the
    difference; one with no such cell stays in the file, and :func:`check` reports it as an orphan.
    """
    notebook = Path(notebook)
    english = _read(notebook)
    problems = _cell_id_problems(english, _relative(notebook, root))
    if problems:
        raise ValueError("\n".join(map(str, problems)))
    path = translation_path(notebook, language, root)
    translation = (read_translation_file(path, language) if path.exists()
                   else TranslationFile(path=path, language=language, notebook=_relative(notebook, root)))
    cells = [cell for cell in english.cells if _translatable(cell)]
    ids = {cell.id for cell in cells}
    old = {entry.id: entry for entry in translation.cells}
    orphans = [entry for entry in translation.cells if entry.id not in ids]
    updated = []
    for cell in cells:
        if cell.id in old:
            updated.append(old[cell.id])
            continue
        match = next((o for o in orphans if o.fingerprint == fingerprint(cell.source)), None)
        if match is None and orphans:
            best = max(orphans, key=lambda o: difflib.SequenceMatcher(None, o.en, cell.source).ratio())
            if difflib.SequenceMatcher(None, best.en, cell.source).ratio() >= 0.6:
                match = best
        if match is not None:
            orphans.remove(match)
            updated.append(CellTranslation(id=cell.id, en=match.en, fingerprint=match.fingerprint, text=match.text))
        else:
            updated.append(CellTranslation(id=cell.id, en=cell.source, fingerprint=fingerprint(cell.source)))
    translation.cells = updated + orphans

    used = [m for cell in english.cells if cell.cell_type == "code" for m in messages_in_code(cell.source)[0]]
    known = translation.string_map()
    translation.strings = ([StringTranslation(en=m, text=known.get(m)) for m in dict.fromkeys(used)]
                           + [s for s in translation.strings if s.en not in used])
    write_translation_file(translation)
    return translation


def accept(notebook: Path, cell_ids: list[str], language: str = "zh", root: Path = ROOT) -> list[str]:
    """Record that the translations of ``cell_ids`` now translate the current English (new ``en`` and fingerprint)."""
    notebook = Path(notebook)
    english = {cell.id: cell.source for cell in _read(notebook).cells if _translatable(cell)}
    path = translation_path(notebook, language, root)
    translation = read_translation_file(path, language)
    for cell_id in cell_ids:
        entry = translation.cell(cell_id)
        if cell_id not in english:
            raise ValueError(f"{_relative(notebook, root)} has no Markdown cell {cell_id!r}; its cells: {sorted(english)}.")
        if entry is None or not entry.text:
            raise ValueError(f"{_relative(path, root)}: cell {cell_id} has no {language} text yet; translate it first.")
        entry.en, entry.fingerprint = english[cell_id], fingerprint(english[cell_id])
    write_translation_file(translation)
    return cell_ids
