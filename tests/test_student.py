"""Tests of course_lib.student: the student versions of the notebooks.

Small notebooks built here check each rule exactly; then the real notebooks are converted, every
solution line is searched for in the student files. That a student notebook still runs from top
to bottom, its checks saying "Not done yet", is shown by tests/test_nbgrader.py, whose autograde
runs lesson 01's.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.student import main, make_nbgrader_source, make_student_notebook, write_student_versions

ROOT = Path(__file__).parents[1]
MARKER = re.compile(r"^[ \t]*#+[ \t]*(BEGIN|END) SOLUTION[ \t]*$")

EXERCISE = (
    "import torch\n"
    "\n"
    "def q_sample_mine(x0, t, noise, alpha_bar):\n"
    "    ### BEGIN SOLUTION\n"
    "    a = alpha_bar[t].view(-1, 1, 1, 1)\n"
    "    return a.sqrt() * x0 + (1 - a).sqrt() * noise\n"
    "    ### END SOLUTION"
)
CHECK = "exercises.check_q_sample(q_sample_mine);"


def _stream(text):
    return new_output("stream", name="stdout", text=text)


def _exercise_notebook():
    """intro (Markdown), exercise with outputs, check cell with outputs, an unrelated plot."""
    exercise = new_code_cell(EXERCISE, execution_count=3, outputs=[_stream("solution output\n")])
    exercise.metadata = {"execution": {"iopub.status.idle": "t"}, "tags": ["exercise"], "scrolled": True}
    check = new_code_cell(CHECK, execution_count=4, outputs=[_stream("✅ Correct: q_sample\n")])
    plot = new_code_cell("show(images)", execution_count=5, outputs=[_stream("a picture\n")])
    return new_notebook(cells=[
        new_markdown_cell("Write it between the `### BEGIN SOLUTION` and `### END SOLUTION` lines."),
        exercise, check, plot,
    ])


# ---------------------------------------------------------------------------------------------
# the rules, on small notebooks
# ---------------------------------------------------------------------------------------------


def test_code_solution_becomes_the_stub_at_the_marker_indentation():
    student = make_student_notebook(_exercise_notebook(), name="lesson")
    assert student.cells[1].source == (
        "import torch\n"
        "\n"
        "def q_sample_mine(x0, t, noise, alpha_bar):\n"
        "    # YOUR CODE HERE\n"
        "    raise NotImplementedError()"
    )


def test_top_level_and_nested_indentation_and_two_blocks_in_one_cell():
    source = (
        "### BEGIN SOLUTION\n"
        "answer = 42\n"
        "### END SOLUTION\n"
        "class Model:\n"
        "    def forward(self, x):\n"
        "        if x is not None:\n"
        "            #### BEGIN SOLUTION\n"
        "            return x * 2\n"
        "            ### END SOLUTION  \n"
        "        return x\n"
    )
    student = make_student_notebook(new_notebook(cells=[new_code_cell(source)]))
    assert student.cells[0].source == (
        "# YOUR CODE HERE\n"
        "raise NotImplementedError()\n"
        "class Model:\n"
        "    def forward(self, x):\n"
        "        if x is not None:\n"
        "            # YOUR CODE HERE\n"
        "            raise NotImplementedError()\n"
        "        return x\n"
    )


def test_markdown_solution_becomes_your_answer_here_and_prose_mentions_stay():
    prose = "Write it between the `### BEGIN SOLUTION` and `### END SOLUTION` lines."
    answer = "Why does DDIM with eta = 0 give the same image?\n\n### BEGIN SOLUTION\nNo noise is added.\n### END SOLUTION\n"
    student = make_student_notebook(new_notebook(cells=[new_markdown_cell(prose), new_markdown_cell(answer)]),
                                    name="lesson")
    assert student.cells[0].source == prose
    assert "nbgrader" not in student.cells[0].metadata
    assert student.cells[1].source == "Why does DDIM with eta = 0 give the same image?\n\nYOUR ANSWER HERE\n"
    # nbgrader requires a Markdown solution to be graded by hand as well
    assert student.cells[1].metadata == {"nbgrader": {
        "solution": True, "grade": True, "points": 0, "locked": False,
        "grade_id": "lesson-cell-1", "schema_version": 3}}


def test_solution_cell_gets_nbgrader_metadata_and_loses_outputs():
    student = make_student_notebook(_exercise_notebook(), name="01_forward diffusion.v2")
    cell = student.cells[1]
    assert cell.outputs == []
    assert cell.execution_count is None
    # the old metadata is gone (execution timings, scrolled); tags are kept
    assert cell.metadata == {
        "tags": ["exercise"],
        "nbgrader": {"solution": True, "grade": False, "locked": False,
                     "grade_id": "01_forward_diffusion_v2-cell-1", "schema_version": 3},
    }
    nbformat.validate(student)


def test_cells_using_the_solution_lose_their_outputs_others_keep_them():
    student = make_student_notebook(_exercise_notebook())
    check, plot = student.cells[2], student.cells[3]
    assert check.outputs == [] and check.execution_count is None
    assert plot.outputs == [_stream("a picture\n")] and plot.execution_count == 5


def test_grade_ids_are_unique():
    nb = new_notebook(cells=[new_code_cell(EXERCISE), new_code_cell(EXERCISE.replace("q_sample", "f"))])
    ids = [c.metadata["nbgrader"]["grade_id"] for c in make_student_notebook(nb, name="x").cells]
    assert ids == ["x-cell-0", "x-cell-1"]


def test_widget_state_and_widget_views_are_dropped():
    nb = _exercise_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m1": {"outputs": ["x"]}}}}
    nb.metadata["celltoolbar"] = "Create Assignment"
    view = {"model_id": "m1", "version_major": 2, "version_minor": 0}
    nb.cells[3].outputs = [
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view, "text/plain": "VBox()"}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view}),
        _stream("kept\n"),
    ]
    student = make_student_notebook(nb)
    assert "widgets" not in student.metadata and "celltoolbar" not in student.metadata
    assert student.cells[3].outputs == [new_output("display_data", data={"text/plain": "VBox()"}), _stream("kept\n")]
    assert "widget" not in json.dumps(student)
    nbformat.validate(student)


def test_the_instructor_notebook_is_not_changed():
    nb = _exercise_notebook()
    nb.metadata["widgets"] = {"state": {}}
    before = json.dumps(nb, sort_keys=True)
    make_student_notebook(nb)
    assert json.dumps(nb, sort_keys=True) == before


def test_nbgrader_solution_cell_without_markers_is_replaced_whole_and_a_student_version_is_a_fixed_point():
    cell = new_code_cell("x = compute()\nprint(x)")
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                 "grade_id": "mine", "schema_version": 3}
    student = make_student_notebook(new_notebook(cells=[cell]))
    assert student.cells[0].source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert student.cells[0].metadata["nbgrader"]["grade_id"] == "mine"
    once = make_student_notebook(_exercise_notebook(), name="lesson")
    twice = make_student_notebook(once, name="lesson")
    assert twice == once


@pytest.mark.parametrize("source, cell_index, match", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", 1, r"lesson, cell 1 \(code\), line 2: '### BEGIN SOLUTION' without"),
    ("def f():\n    return 1\n    ### END SOLUTION", 1, r"lesson, cell 1 \(code\), line 3: '### END SOLUTION' without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", 1, r"lesson, cell 1 \(code\), line 2: .*inside the solution"),
    ("x = 1  ### BEGIN SOLUTION\n### END SOLUTION", 1, r"lesson, cell 1 \(code\), line 1: .*mentions a solution marker"),
])
def test_bad_markers_raise_value_error_naming_notebook_and_cell(source, cell_index, match):
    nb = new_notebook(cells=[new_markdown_cell("intro"), new_code_cell(source)])
    with pytest.raises(ValueError, match=match):
        make_student_notebook(nb, name="lesson")


def test_unbalanced_markers_in_markdown_raise_too():
    nb = new_notebook(cells=[new_markdown_cell("### BEGIN SOLUTION\nthe answer")])
    with pytest.raises(ValueError, match=r"lesson, cell 0 \(markdown\), line 1: '### BEGIN SOLUTION' without"):
        make_student_notebook(nb, name="lesson")


def test_not_a_notebook_raises_type_error():
    with pytest.raises(TypeError, match="expects an nbformat notebook, got dict"):
        make_student_notebook({"cells": []})


# ---------------------------------------------------------------------------------------------
# write_student_versions and the command line
# ---------------------------------------------------------------------------------------------


def test_write_student_versions_and_main(tmp_path, capsys):
    src = tmp_path / "notebooks"
    src.mkdir()
    nbformat.write(_exercise_notebook(), src / "01_a.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("no exercise")]), src / "00_b.ipynb")
    written = write_student_versions(src, tmp_path / "student")
    assert written == [tmp_path / "student" / "00_b.ipynb", tmp_path / "student" / "01_a.ipynb"]
    student = nbformat.read(written[1], as_version=4)
    assert student.cells[1].metadata["nbgrader"]["grade_id"] == "01_a-cell-1"
    assert "NotImplementedError" in student.cells[1].source

    assert main([str(src), str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "cli" / "00_b.ipynb"), str(tmp_path / "cli" / "01_a.ipynb")]
    assert main([str(src), str(src)]) == 1
    assert "would overwrite the solutions" in capsys.readouterr().err


def test_write_student_versions_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_student_versions(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match=r"No \.ipynb files in"):
        write_student_versions(tmp_path, tmp_path / "out")
    nbformat.write(_exercise_notebook(), tmp_path / "a.ipynb")
    with pytest.raises(ValueError, match="is the notebook folder itself"):
        write_student_versions(tmp_path, tmp_path / ".")


def test_a_bad_notebook_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_exercise_notebook(), src / "a.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("### BEGIN SOLUTION\nx = 1")]), src / "b.ipynb")
    with pytest.raises(ValueError, match=r"b, cell 0 \(code\), line 1"):
        write_student_versions(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the course's notebooks
# ---------------------------------------------------------------------------------------------


def _solution_blocks(source: str) -> list[list[str]]:
    """The non-blank lines (stripped) of each marked block of a cell's source."""
    blocks, block = [], None
    for line in source.split("\n"):
        marker = MARKER.match(line)
        if marker and marker[1] == "BEGIN":
            block = []
        elif marker:
            blocks.append(block)
            block = None
        elif block is not None and line.strip():
            block.append(line.strip())
    return blocks


def _all_strings(value) -> list[str]:
    """Every string in a JSON document (sources, outputs, metadata), unescaped."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_all_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    return []


@pytest.fixture(scope="module", params=["notebooks", "notebooks/zh"])
def converted(request, tmp_path_factory):
    """(instructor path, student path) for every course notebook, English and Chinese (make student
    writes both), and the instructor bytes before."""
    folder = ROOT / request.param
    before = {path: path.read_bytes() for path in sorted(folder.glob("*.ipynb"))}
    out = tmp_path_factory.mktemp("student")
    written = write_student_versions(folder, out)
    after = {path: path.read_bytes() for path in sorted(folder.glob("*.ipynb"))}
    return before, after, {path: out / path.name for path in before}, written


def test_every_course_notebook_gets_a_student_version_and_none_is_modified(converted):
    before, after, pairs, written = converted
    assert before, "no notebooks in the course's notebook folder"
    assert after == before
    assert sorted(written) == sorted(pairs.values())


def test_no_solution_line_is_left_in_any_student_notebook(converted):
    before, _, pairs, _ = converted
    with_markers = 0
    for instructor_path, student_path in pairs.items():
        instructor = nbformat.reads(before[instructor_path].decode(), as_version=4)
        blocks = [(i, block) for i, cell in enumerate(instructor.cells) for block in _solution_blocks(cell.source)]
        if not blocks:
            continue
        with_markers += 1
        # a line that the instructor notebook also shows outside its solutions is no leak
        outside = "\n".join(
            "\n".join(line for line in cell.source.split("\n") if not MARKER.match(line))
            if not _solution_blocks(cell.source) else ""
            for cell in instructor.cells
        )
        text = student_path.read_text()
        haystack = text + "\n" + "\n".join(_all_strings(json.loads(text)))
        for index, block in blocks:
            for line in block:
                if line in outside:
                    continue
                assert line not in haystack, f"{student_path.name}: cell {index}'s solution line {line!r} leaked"

        student = nbformat.read(student_path, as_version=4)
        for index, (cell, cell_after) in enumerate(zip(instructor.cells, student.cells)):
            if cell.cell_type != "code":
                continue
            begins = [MARKER.match(l)[0].split("#")[0] for l in cell.source.split("\n")
                      if MARKER.match(l) and MARKER.match(l)[1] == "BEGIN"]
            stubs = [line.split("raise")[0] for line in cell_after.source.split("\n")
                     if line.strip() == "raise NotImplementedError()"]
            old_stubs = [line for line in cell.source.split("\n") if line.strip() == "raise NotImplementedError()"]
            # every BEGIN became `raise NotImplementedError()` at its indentation
            assert len(stubs) == len(begins) + len(old_stubs), f"{student_path.name}, cell {index}"
            if begins:
                assert set(begins) <= set(stubs), f"{student_path.name}, cell {index}: indentation"
                assert cell_after.outputs == [] and cell_after.metadata["nbgrader"]["solution"] is True
        assert "widgets" not in student.metadata
    assert with_markers >= 1, "no course notebook has ### BEGIN SOLUTION markers: nothing was checked"


@pytest.mark.slow  # two conversions of every notebook through make (about 12 s)
def test_make_student_and_nbgrader_source_write_the_english_and_the_chinese_lessons(tmp_path):
    """make student writes student/ and student/zh/, make nbgrader-source source/lessons and
    source/lessons-zh, each the same bytes as write_student_versions gives for that folder."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    venv = Path(sys.prefix)  # this interpreter, as $(VENV)/bin/python; its install stamp is not remade
    command = ["make", "-o", str(venv / ".course-installed"), "student", "nbgrader-source", f"VENV={venv}",
               f"STUDENT_DIR={tmp_path / 'student'}", f"NBGRADER_DIR={tmp_path / 'course'}"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    for source, student, nbgrader in (("notebooks", "student", "course/source/lessons"),
                                      ("notebooks/zh", "student/zh", "course/source/lessons-zh")):
        names = sorted(path.name for path in (ROOT / source).glob("*.ipynb"))
        assert names, f"no notebooks in {source}"
        for out, nbgrader_source in ((student, False), (nbgrader, True)):
            expected = write_student_versions(ROOT / source, tmp_path / "expected" / out, nbgrader_source=nbgrader_source)
            assert sorted(path.name for path in (tmp_path / out).glob("*.ipynb")) == names, out
            for path in expected:
                assert (tmp_path / out / path.name).read_bytes() == path.read_bytes(), f"{out}/{path.name}"
    # the Chinese student lessons have their solutions taken out, and their check cells kept
    lesson = nbformat.read(tmp_path / "student" / "zh" / "01_forward_diffusion.ipynb", as_version=4)
    stubs = [cell for cell in lesson.cells if cell.metadata.get("nbgrader", {}).get("solution")]
    assert stubs and all("raise NotImplementedError()" in cell.source and not cell.outputs for cell in stubs)
    assert not any("### BEGIN SOLUTION" in cell.source for cell in lesson.cells)


# ---------------------------------------------------------------------------------------------
# make_nbgrader_source: the instructor notebook with nbgrader's metadata
# ---------------------------------------------------------------------------------------------


def test_nbgrader_source_keeps_solutions_and_makes_check_cells_graded_tests():
    nb = _exercise_notebook()
    nb.cells.append(new_code_cell("ok = exercises.check_cfg(cfg_mine)\nexercises.check_ddim_step(step);"))
    before = copy.deepcopy(nb)
    source = make_nbgrader_source(nb, name="lesson 1")
    assert nb == before  # the argument is not changed
    exercise, check, plot, two_checks = source.cells[1:]
    assert exercise.source == EXERCISE  # the solution stays
    assert exercise.metadata["nbgrader"] == {
        "solution": True, "grade": False, "locked": False, "grade_id": "lesson_1-cell-1", "schema_version": 3,
    }
    assert exercise.metadata["tags"] == ["exercise"] and exercise.outputs
    assert check.source.split("\n") == [
        CHECK,
        'assert exercises.check_q_sample(q_sample_mine), "check_q_sample did not pass: read its message '
        'above, fix the exercise, run both cells again"',
    ]
    assert check.metadata["nbgrader"] == {
        "solution": False, "grade": True, "locked": True, "points": 1,
        "grade_id": "lesson_1-check-2", "schema_version": 3,
    }
    assert plot.source == "show(images)" and "nbgrader" not in plot.metadata
    lines = two_checks.source.split("\n")
    assert lines[1].startswith("assert ok, ") and lines[3].startswith("assert exercises.check_ddim_step(step), ")
    assert two_checks.metadata["nbgrader"]["points"] == 2


def test_nbgrader_source_checks_markers_and_input_like_the_student_version():
    bad = new_notebook(cells=[new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1")])
    with pytest.raises(ValueError, match="without a '### END SOLUTION'"):
        make_nbgrader_source(bad, name="bad")
    with pytest.raises(TypeError, match="make_nbgrader_source expects an nbformat notebook"):
        make_nbgrader_source({"cells": []})


def test_main_nbgrader_source_writes_the_solutions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(_exercise_notebook(), src / "lesson.ipynb")
    assert main(["--nbgrader-source", str(src), str(tmp_path / "out")]) == 0
    written = nbformat.read(tmp_path / "out" / "lesson.ipynb", as_version=4)
    assert written.cells[1].source == EXERCISE and written.cells[2].metadata["nbgrader"]["grade"] is True
