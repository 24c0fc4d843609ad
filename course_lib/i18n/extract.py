"""Finding the messages to translate: the literal strings passed to ``tr(...)`` and ``translatable(...)``.

In course_lib's modules and in the lessons' code cells alike, a message to translate is written
as a literal: ``tr("Correct: {what}", what=success)``. Parsing (never running) the code finds
them all, so the tests can list every message that has no translation. A lesson's code must
pass a literal (the translation file is keyed by it); course_lib may also pass a constant that
was marked with ``translatable("...")`` where it was defined.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["MESSAGE_FUNCTIONS", "messages_in_code", "library_messages"]

MESSAGE_FUNCTIONS = ("tr", "translatable")


def _python(source: str) -> str:
    """A code cell as plain Python: IPython's magics and shell lines turned into calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # IPython comes with Jupyter; without it, drop the magic lines
        return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    return TransformerManager().transform_cell(source)


def _function_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def messages_in_code(source: str, cell: bool = True) -> tuple[list[str], list[str]]:
    """(messages, problems) of a code cell (``cell=True``) or a Python module, in source order.

    A problem is a call whose first argument is not a literal string, written as
    ``"line N: ..."``; in a module that is allowed (a constant marked with ``translatable``).
    """
    try:
        tree = ast.parse(_python(source) if cell else source)
    except SyntaxError:
        return [], []
    calls = sorted((node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and _function_name(node.func) in MESSAGE_FUNCTIONS),
                   key=lambda node: (node.lineno, node.col_offset))
    messages, problems = [], []
    for call in calls:
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            messages.append(first.value)
        elif cell:
            shown = "an f-string" if isinstance(first, ast.JoinedStr) else "no literal string"
            problems.append(f"line {call.lineno}: {_function_name(call.func)}(...) is given {shown}; pass the "
                            f"English text as a literal and the values as fields: tr('t = {{t}}', t=t)")
    return messages, problems


def library_messages(package_dir: Path) -> dict[str, list[str]]:
    """English message -> where course_lib uses it (``"exercises/grading.py:46"``), for every module."""
    found: dict[str, list[str]] = {}
    for path in sorted(Path(package_dir).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if not any(name + "(" in source for name in MESSAGE_FUNCTIONS):
            continue
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and _function_name(node.func) in MESSAGE_FUNCTIONS and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                where = f"{path.relative_to(package_dir).as_posix()}:{node.lineno}"
                found.setdefault(node.args[0].value, []).append(where)
    return found
