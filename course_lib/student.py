"""Student versions of the notebooks: the solutions taken out, as nbgrader's ``ClearSolutions`` does.

    python -m course_lib.student notebooks student      # or: make student
    python -m course_lib.student --nbgrader-source notebooks course/source/lessons   # for nbgrader

An exercise in an instructor notebook is written between two marker lines:

    def q_sample_mine(x0, t, noise, alpha_bar):
        ### BEGIN SOLUTION
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise
        ### END SOLUTION

In the student version the markers and everything between them become, at the indentation of
``### BEGIN SOLUTION``,

    def q_sample_mine(x0, t, noise, alpha_bar):
        # YOUR CODE HERE
        raise NotImplementedError()

and in a Markdown cell the block becomes ``YOUR ANSWER HERE``. The check cell after an exercise
then prints "⏳ Not done yet" (course_lib.exercises catches the NotImplementedError), so the
student notebook still runs from top to bottom.

What else changes, so that nothing of a solution is left in the student file:

- a solution cell (one that had markers) loses its outputs, execution count and metadata, and gets
  nbgrader's cell metadata instead (``solution: true``, a ``grade_id`` unique in the notebook; a
  Markdown answer is also ``grade: true, points: 0``, which nbgrader requires of one), so an
  instructor can also run nbgrader on the result; its ``tags`` are kept;
- a code cell that uses a function or class defined in a solution cell, or a name assigned in a
  solution block at top level (the check cell, a plot of the learner's function), loses its
  outputs too: they show the instructor's results ("✅ Correct: ...");
- the notebook-level ``widgets`` metadata (saved widget state, which can hold outputs) is dropped,
  and so are the widget views in outputs that pointed into it (their text fallback stays).

Every other cell, output and picture stays as it is: the student version reads like the lesson.
Running this on a student version changes nothing. As in nbgrader, a cell that already carries
nbgrader's ``solution: true`` but has no markers is replaced as a whole by the stub (unless it
holds the stub already), and a ``grade_id`` given in nbgrader is kept.

A marker is a line holding only ``### BEGIN SOLUTION`` or ``### END SOLUTION`` (any number of
``#``, any indentation). In a Markdown cell, prose that mentions a marker (inside backticks, say)
is left alone; in a code cell a line that mentions one without being one is an error, because
nbgrader would take it as a marker and the two student versions would differ. So are a BEGIN
without END, an END without BEGIN and a BEGIN inside a solution: ValueError, naming the notebook
and the cell.

For a course run with nbgrader, ``--nbgrader-source`` writes the instructor notebooks with
nbgrader's metadata instead (``make_nbgrader_source``): solutions kept, each check cell an
autograded test worth a point per check. Put them in ``<course>/source/<assignment>/``; then
``nbgrader generate_assignment`` releases the same exercises as ``make student`` writes and
``nbgrader autograde`` scores the submissions.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

from .files import atomic_write_text

__all__ = ["make_student_notebook", "make_nbgrader_source", "write_student_versions", "main", "CODE_STUB", "TEXT_STUB"]

BEGIN = "BEGIN SOLUTION"
END = "END SOLUTION"
# nbgrader's defaults (ClearSolutions.code_stub["python"] and ClearSolutions.text_stub)
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEXT_STUB = ("YOUR ANSWER HERE",)
# a marker line: indentation, one or more '#', the marker, nothing else
_MARKER = re.compile(r"^(?P<indent>[ \t]*)#+[ \t]*(?P<kind>BEGIN|END) SOLUTION[ \t\r]*$")
# names a solution cell defines at top level: `def name(`, `class name`, `name = `
_DEFINED = re.compile(r"^(?:def|class)[ \t]+(\w+)|^(\w+)[ \t]*(?::[^=\n]*)?=(?!=)", re.MULTILINE)
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_KEPT_SOLUTION_METADATA = ("tags",)
# a check cell's line: `exercises.check_x(fn)`, `ok = exercises.check_x(fn)`, a `;` allowed
_CHECK_CALL = re.compile(
    r"^(?P<indent>[ \t]*)(?:(?P<name>\w+)[ \t]*=[ \t]*)?"
    r"(?P<call>(?:course_lib\.)?exercises\.(?P<check>check_\w+)\(.*\))[ \t]*;?[ \t]*$"
)


def _replace_solutions(source: str, cell_type: str, where: str) -> tuple[str, list[str]]:
    """Replace each marked block of ``source`` by the stub.

    :return: the new source, and the lines taken out (markers excluded), one string per block
    """
    stub = CODE_STUB if cell_type == "code" else TEXT_STUB
    new_lines: list[str] = []
    blocks: list[str] = []
    block: list[str] = []
    begin_line = None  # line number of the open BEGIN, None outside a solution
    for number, line in enumerate(source.split("\n"), start=1):
        marker = _MARKER.match(line)
        if marker is None:
            if cell_type == "code" and (BEGIN in line or END in line):
                raise ValueError(
                    f"{where}, line {number}: {line.strip()!r} mentions a solution marker but is not "
                    f"one. Expected a line holding only '### {BEGIN}' or '### {END}'. Put the "
                    f"marker on a line of its own, or reword the line."
                )
            if begin_line is None:
                new_lines.append(line)
            else:
                block.append(line)
        elif marker["kind"] == "BEGIN":
            if begin_line is not None:
                raise ValueError(
                    f"{where}, line {number}: '### {BEGIN}' inside the solution opened on line "
                    f"{begin_line}. Expected '### {END}' first. Close the first solution before "
                    f"opening another."
                )
            begin_line = number
            new_lines.extend(marker["indent"] + stub_line for stub_line in stub)
        else:
            if begin_line is None:
                raise ValueError(
                    f"{where}, line {number}: '### {END}' without a '### {BEGIN}' before it. "
                    f"Expected each END to close a BEGIN. Add the missing BEGIN or delete this line."
                )
            begin_line = None
            blocks.append("\n".join(block))
            block = []
    if begin_line is not None:
        raise ValueError(
            f"{where}, line {begin_line}: '### {BEGIN}' without a '### {END}' after it. "
            f"Expected each BEGIN to be closed in the same cell. Add '### {END}' where the "
            f"solution ends."
        )
    return "\n".join(new_lines), blocks


def _is_nbgrader_solution(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def _already_cleared(cell) -> bool:
    """Whether a cell already holds the stub (so a student version passes through unchanged)."""
    lines = [line.strip() for line in cell.source.split("\n")]
    stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
    return any(lines[i:i + len(stub)] == list(stub) for i in range(len(lines)))


def _mark_solution_cell(cell, grade_id: str) -> None:
    """Give a solution cell nbgrader's metadata (its ``tags`` and an nbgrader ``grade_id`` kept)."""
    kept = {key: cell.metadata[key] for key in _KEPT_SOLUTION_METADATA if key in cell.metadata}
    nbgrader_metadata = {
        "solution": True,
        "grade": False,
        "locked": False,
        # an id the author gave in nbgrader is kept, so it still matches their gradebook
        "grade_id": cell.metadata.get("nbgrader", {}).get("grade_id") or grade_id,
        "schema_version": 3,
    }
    if cell.cell_type == "markdown":
        # nbgrader's validator rejects a Markdown solution that is not also graded (by hand)
        nbgrader_metadata.update(grade=True, points=0)
    cell.metadata = nbformat.from_dict({**kept, "nbgrader": nbgrader_metadata})


def _checked_copy(nb, name: str, caller: str):
    """A deep copy of ``nb``, after checking that it is an nbformat v4 notebook."""
    if not hasattr(nb, "cells") or not hasattr(nb, "metadata"):
        raise TypeError(
            f"{caller} expects an nbformat notebook, got {type(nb).__name__}. "
            f"Read one with nbformat.read(path, as_version=4)."
        )
    if nb.get("nbformat") != 4:
        raise ValueError(
            f"{name}: nbformat version {nb.get('nbformat')!r}, expected 4. Convert it first with "
            f"nbformat.read(path, as_version=4)."
        )
    return copy.deepcopy(nb)


def _strip_widget_views(outputs: list) -> list:
    """Outputs without widget views (their models lived in the dropped widget state)."""
    kept = []
    for output in outputs:
        data = output.get("data")
        if data is not None and _WIDGET_VIEW in data:
            data = {mime: value for mime, value in data.items() if mime != _WIDGET_VIEW}
            if not data:
                continue
            output = copy.deepcopy(output)
            output["data"] = nbformat.from_dict(data)
        kept.append(output)
    return kept


def make_student_notebook(nb, name: str = "notebook"):
    """Return the student version of an instructor notebook (``nb`` itself is not changed).

    :param nb: an nbformat v4 notebook (``nbformat.read(path, as_version=4)``)
    :param name: the notebook's name, used in the cells' ``grade_id`` (``"<name>-cell-<index>"``,
        characters other than letters, digits, ``_`` and ``-`` replaced by ``_``) and in error messages; ``write_student_versions`` passes the file's stem
    :return: a new notebook: marked blocks replaced by the stubs, solution cells with nbgrader
        metadata and no outputs, outputs of the cells that use a solution cleared, no widget state
    :raises ValueError: unbalanced or nested markers, or a code line that mentions a marker
        without being one; the message names the notebook, the cell index and the line
    """
    student = _checked_copy(nb, name, "make_student_notebook")
    student.metadata.pop("widgets", None)
    student.metadata.pop("celltoolbar", None)  # as nbgrader does
    grade_id_prefix = re.sub(r"[^A-Za-z0-9_-]", "_", name)  # nbgrader's grade_id pattern

    solution_names: set[str] = set()
    solution_cells: set[int] = set()
    for index, cell in enumerate(student.cells):
        if cell.cell_type not in ("code", "markdown"):
            continue
        where = f"{name}, cell {index} ({cell.cell_type})"
        source, blocks = _replace_solutions(cell.source, cell.cell_type, where)
        if not blocks and _is_nbgrader_solution(cell) and not _already_cleared(cell):
            # nbgrader: a solution cell without markers is replaced as a whole (unless it already
            # holds the stub: then it is a student version already, which is left as it is)
            source = "\n".join(CODE_STUB if cell.cell_type == "code" else TEXT_STUB)
            blocks = [cell.source]
        if not blocks:
            continue
        solution_cells.add(index)
        if cell.cell_type == "code":
            # the functions and classes the cell defines, and the names its solutions assign at top level
            solution_names.update(a for a, _ in _DEFINED.findall(cell.source) if a)
            for block in blocks:
                solution_names.update(a or b for a, b in _DEFINED.findall(block))
        cell.source = source
        _mark_solution_cell(cell, f"{grade_id_prefix}-cell-{index}")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        else:
            # pictures pasted into a Markdown answer, unless the stub still refers to them
            attachments = cell.pop("attachments", {})
            kept_attachments = {k: v for k, v in attachments.items() if k in source}
            if kept_attachments:
                cell.attachments = kept_attachments

    uses_solution = (
        re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(solution_names))) + r")\b")
        if solution_names else None
    )
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code" or index in solution_cells:
            continue
        if uses_solution is not None and uses_solution.search(cell.source):
            cell.outputs = []
            cell.execution_count = None
        else:
            cell.outputs = _strip_widget_views(cell.outputs)
    return student


def make_nbgrader_source(nb, name: str = "notebook"):
    """Return an instructor notebook prepared for nbgrader's ``source/`` folder (``nb`` unchanged).

    The solutions stay in; what nbgrader needs to release and grade the exercises is added:

    - a cell with ``### BEGIN SOLUTION`` markers gets the same nbgrader metadata as in the student
      version (``solution: true``, ``grade_id "<name>-cell-<index>"``);
    - a check cell (a code cell calling ``exercises.check_...``) becomes an autograded test cell:
      ``grade: true``, ``locked: true``, one point per check, ``grade_id "<name>-check-<index>"``,
      and after each check line an ``assert`` of its result, so that a check that prints
      "Not yet" or "Not done yet" (it returns False) scores nothing in ``nbgrader autograde``.

    ``nbgrader generate_assignment`` then releases the same exercises as ``make student`` writes
    (with the asserts in the check cells), and ``nbgrader autograde`` gives each solved exercise
    its points (tests/test_nbgrader.py runs both).

    :raises ValueError: as ``make_student_notebook``, for markers it could not take out
    """
    source_nb = _checked_copy(nb, name, "make_nbgrader_source")
    source_nb.metadata.pop("widgets", None)
    grade_id_prefix = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    for index, cell in enumerate(source_nb.cells):
        if cell.cell_type not in ("code", "markdown"):
            continue
        where = f"{name}, cell {index} ({cell.cell_type})"
        _, blocks = _replace_solutions(cell.source, cell.cell_type, where)  # checks the markers
        if blocks or _is_nbgrader_solution(cell):
            _mark_solution_cell(cell, f"{grade_id_prefix}-cell-{index}")
            continue
        if cell.cell_type != "code":
            continue
        lines, checks = [], 0
        for line in cell.source.split("\n"):
            lines.append(line)
            call = _CHECK_CALL.match(line)
            if call is None:
                continue
            checks += 1
            result = call["name"] or call["call"]
            lines.append(
                f"{call['indent']}assert {result}, "
                f"\"{call['check']} did not pass: read its message above, fix the exercise, run both cells again\""
            )
        if checks:
            cell.source = "\n".join(lines)
            cell.metadata = nbformat.from_dict({
                **{key: cell.metadata[key] for key in _KEPT_SOLUTION_METADATA if key in cell.metadata},
                "nbgrader": {
                    "solution": False,
                    "grade": True,
                    "locked": True,
                    "points": checks,
                    "grade_id": cell.metadata.get("nbgrader", {}).get("grade_id")
                    or f"{grade_id_prefix}-check-{index}",
                    "schema_version": 3,
                },
            })
    return source_nb


def write_student_versions(src_dir, out_dir, *, nbgrader_source: bool = False) -> list[Path]:
    """Write the student version of every ``*.ipynb`` in ``src_dir`` to ``out_dir`` (same names).

    :param src_dir: the folder of instructor notebooks (not searched recursively); never modified
    :param out_dir: the folder to write to, created if missing; must not be ``src_dir``
    :param nbgrader_source: write ``make_nbgrader_source`` versions instead (solutions kept,
        check cells autograded), for an nbgrader course's ``source/<assignment>/`` folder
    :return: the paths written, in name order
    :raises ValueError: ``src_dir`` missing or without notebooks, ``out_dir`` equal to ``src_dir``,
        or a notebook with unbalanced markers (then nothing is written)
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise ValueError(
            f"Notebook folder {str(src)!r} does not exist. Expected the folder of instructor "
            f"notebooks, e.g. 'notebooks'. Check the path."
        )
    if out.resolve() == src.resolve():
        raise ValueError(
            f"The output folder {str(out)!r} is the notebook folder itself, which would overwrite "
            f"the solutions. Expected another folder. Pass e.g. 'student'."
        )
    paths = sorted(p for p in src.glob("*.ipynb") if p.is_file())
    if not paths:
        raise ValueError(
            f"No .ipynb files in {str(src)!r}. Expected the folder of instructor notebooks. "
            f"Check the path."
        )
    # convert everything first, so an error in one notebook leaves no half-written folder
    convert = make_nbgrader_source if nbgrader_source else make_student_notebook
    students = [convert(nbformat.read(path, as_version=4), name=path.stem) for path in paths]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, student in zip(paths, students):
        target = out / path.name
        nbformat.validate(student)
        atomic_write_text(target, nbformat.writes(student) + "\n")  # as nbformat.write; never half a notebook
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.student SRC OUT``: write the student versions; 1 on an error."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.student",
        description="Write student versions of the notebooks: solutions replaced by "
        "'raise NotImplementedError()', as nbgrader's ClearSolutions does.",
    )
    parser.add_argument("src", help="folder of instructor notebooks, e.g. notebooks")
    parser.add_argument("out", help="folder to write the student versions to, e.g. student")
    parser.add_argument(
        "--nbgrader-source", action="store_true",
        help="write the instructor notebooks with nbgrader's metadata instead (solutions kept, "
        "check cells graded), for an nbgrader course's source/<assignment>/ folder",
    )
    args = parser.parse_args(argv)
    try:
        written = write_student_versions(args.src, args.out, nbgrader_source=args.nbgrader_source)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
