"""nbgrader itself takes the course's notebooks: it releases them as ``make student`` does, and grades.

Runs of the real ``nbgrader`` command in a throw-away course folder (about a minute together):

- ``generate_assignment`` on the committed instructor notebooks as they are (they carry no nbgrader
  cell metadata, so with ``ClearSolutions.enforce_metadata=False``, as for an instructor who only
  wrote the markers): every released cell has the source of our student version;
- ``generate_assignment`` with nbgrader's default checks on the notebooks that
  ``python -m course_lib.student --nbgrader-source`` writes: accepted, the released cells are our
  student version of them, and the gradebook holds two exercises and two graded checks per lesson;
- ``autograde`` of lesson 01 for three students: its three exercises right (3 points), one with a
  typical mistake (2 points), the untouched release (0 points).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.student import make_nbgrader_source, make_student_notebook, write_student_versions

pytestmark = pytest.mark.slow  # runs nbgrader's generate_assignment and autograde (minutes)

pytest.importorskip("nbgrader", reason="nbgrader is in the test extra: pip install -e '.[test]'")

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
LESSON_01 = "01_forward_diffusion.ipynb"
# lesson 01's q_sample exercise with the square root of (1 - alpha_bar) forgotten
RIGHT = "return a.sqrt() * x0 + (1 - a).sqrt() * noise"
MISTAKE = "return a.sqrt() * x0 + (1 - a) * noise"


def _nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader runs the `alembic` command to set up its gradebook: it lives beside this Python
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args,
         f"--CourseDirectory.root={root}", f"--db=sqlite:///{root / 'gradebook.db'}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run


def _read(path: Path):
    return nbformat.read(path, as_version=4)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course folder: the lessons with exercises as they are (assignment 'plain'), their nbgrader
    sources (assignment 'lessons') and lesson 01's alone (assignment 'lesson01')."""
    root = tmp_path_factory.mktemp("nbgrader-course")
    lessons = sorted(path for path in NOTEBOOKS.glob("*.ipynb") if "### BEGIN SOLUTION" in path.read_text())
    assert len(lessons) >= 8, f"expected exercises in lessons 01-09, found them in {[p.name for p in lessons]}"
    plain = root / "source" / "plain"
    plain.mkdir(parents=True)
    for path in lessons:
        (plain / path.name).write_bytes(path.read_bytes())
    write_student_versions(plain, root / "source" / "lessons", nbgrader_source=True)
    (root / "source" / "lesson01").mkdir()
    (root / "source" / "lesson01" / LESSON_01).write_bytes((root / "source" / "lessons" / LESSON_01).read_bytes())
    return root, [path.name for path in lessons]


def test_nbgrader_releases_the_plain_instructor_notebooks_as_our_student_versions(course):
    root, names = course
    _nbgrader(root, "generate_assignment", "plain", "--ClearSolutions.enforce_metadata=False")
    for name in names:
        theirs = _read(root / "release" / "plain" / name)
        ours = make_student_notebook(_read(NOTEBOOKS / name), name=Path(name).stem)
        assert [c.source for c in theirs.cells] == [c.source for c in ours.cells], name
        assert sum("raise NotImplementedError()" in c.source for c in theirs.cells) >= 2, name


def test_nbgrader_accepts_the_nbgrader_sources_and_records_two_graded_exercises_per_lesson(course):
    from nbgrader.api import Gradebook

    root, names = course
    _nbgrader(root, "generate_assignment", "lessons")  # nbgrader's metadata checks on
    for name in names:
        theirs = _read(root / "release" / "lessons" / name)
        source = make_nbgrader_source(_read(NOTEBOOKS / name), name=Path(name).stem)
        ours = make_student_notebook(source, name=Path(name).stem)
        assert [c.source for c in theirs.cells] == [c.source for c in ours.cells], name
        graded = [c for c in theirs.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(graded) >= 2 and all(c.metadata["nbgrader"]["locked"] for c in graded), name
        assert all("assert ok, " in c.source for c in graded), name
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        assignment = gradebook.find_assignment("lessons")
        assert sorted(nb.name + ".ipynb" for nb in assignment.notebooks) == names
        for notebook in assignment.notebooks:
            assert len(notebook.solution_cells) >= 2, notebook.name
            assert notebook.max_score >= 2, notebook.name


def test_nbgrader_autograde_scores_right_mistaken_and_untouched_lesson_01(course):
    from nbgrader.api import Gradebook

    root, _ = course
    _nbgrader(root, "generate_assignment", "lesson01")
    released = (root / "release" / "lesson01" / LESSON_01).read_text()
    solved = (root / "source" / "lesson01" / LESSON_01).read_text()
    assert RIGHT in solved, "lesson 01's q_sample solution changed: update RIGHT and MISTAKE here"
    submissions = {"alice": solved, "bob": solved.replace(RIGHT, MISTAKE), "carol": released}
    for student, text in submissions.items():
        folder = root / "submitted" / student / "lesson01"
        folder.mkdir(parents=True)
        (folder / LESSON_01).write_text(text)
    _nbgrader(root, "autograde", "lesson01", "--create")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        scores = {s: gradebook.find_submission("lesson01", s).score for s in submissions}
        max_score = gradebook.find_assignment("lesson01").max_score
    assert max_score == 3
    assert scores == {"alice": 3, "bob": 2, "carol": 0}

    # carol's untouched student version ran from top to bottom: no error but in the three graded
    # checks, which said "Not done yet"; bob's says what is wrong with his q_sample
    carol = _read(root / "autograded" / "carol" / "lesson01" / LESSON_01)
    checks = [c for c in carol.cells if c.metadata.get("nbgrader", {}).get("grade")]
    for cell in carol.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        printed = "".join(o.get("text", "") for o in cell.outputs)
        if cell in checks:
            assert "Not done yet" in printed and errors[0].ename == "AssertionError", cell.source
        else:
            assert not errors, f"carol's lesson 01 failed in a cell that is no check:\n{cell.source}"
    bob = _read(root / "autograded" / "bob" / "lesson01" / LESSON_01)
    printed = "".join(o.get("text", "") for c in bob.cells if "check_q_sample" in c.source for o in c.outputs)
    assert "Not yet" in printed and "square root" in printed, printed
