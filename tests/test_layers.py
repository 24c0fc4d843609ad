"""The layers of course_lib, as CONTRIBUTING.md's architecture table lists them, hold in the code.

The table's rows are the layers, top to bottom; a module may import its own row and the rows
above it, never a row below. This test reads the table from CONTRIBUTING.md and every module's
imports from its syntax tree (``ast``, nothing is imported), so the document and the code cannot
drift apart: a new module needs a row, an upward import fails here with the line that makes it.
A row names modules (`checks.py`, `nn/unet.py`) or a package (`exercises/`, all its modules).

It also checks that the imports of course_lib's own modules form no cycle, and that they sit at
the top of the module, where a reader sees the layering (lazy imports are for heavy third-party
packages only, as nanoGPT does).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "course_lib"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"

# Modules whose owners still move lazy own imports to the top (issue 13), and import cycles still to
# break (i18n/__init__.py imports i18n/catalogues.py inside a function, which imports the package);
# both empty when done.
LAZY_OWN_IMPORTS_PENDING: set[str] = set()
CYCLES_PENDING: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """course_lib/nn/unet.py -> "course_lib.nn.unet"; course_lib/nn/__init__.py -> "course_lib.nn"."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def read_layer_table(text: str) -> list[list[str]]:
    """The table under "## Architecture as built": per row, the names in its first cell's backticks."""
    section = text.split("## Architecture as built", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "module":
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        assert names, f"CONTRIBUTING.md: the table row {line!r} names no module in backticks"
        rows.append(names)
    return rows


def layer_of_each_module(rows: list[list[str]]) -> dict[str, int]:
    """Module name -> row index. `x.py` is course_lib.x, `nn/x.py` course_lib.nn.x, `x/` a package."""
    layers = {}
    for index, names in enumerate(rows):
        for name in names:
            if name.endswith("/"):
                package = "course_lib." + name.rstrip("/").replace("/", ".")
                members = [m for m in MODULES if m == package or m.startswith(package + ".")]
                assert members, f"CONTRIBUTING.md's table names the package {name}, which course_lib does not have"
                layers.update(dict.fromkeys(members, index))
            else:
                module = "course_lib." + name.removesuffix(".py").replace("/", ".")
                assert module in MODULES, (f"CONTRIBUTING.md's table names {name}, which is not a module of "
                                           f"course_lib: correct the row or remove it")
                layers[module] = index
    return layers


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def own_imports(module: str, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported course_lib module, line, at the top of the module?) for each import of an own module.

    :param source: the module's text; by default read from its file
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = _parsed(path) if source is None else ast.parse(source, filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` imports the module x when there is one, else a name of the package
            targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                       for alias in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "course_lib" or target.startswith("course_lib."):
                found.append((target, node.lineno, id(node) in top_level))
    return found


def with_package_inits(layers: dict[str, int]) -> dict[str, int]:
    """A package's ``__init__`` without a row of its own (course_lib/, nn/) sits at the lowest row it imports from.

    So ``from . import __version__`` is fine anywhere while course_lib/__init__.py imports nothing of
    its own, and only below what it imports once it does.
    """
    layers = dict(layers)
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module not in layers:
            rows = [layers[target] for target, _, _ in own_imports(module) if target in layers]
            layers[module] = max(rows, default=0)
    return layers


ROWS = read_layer_table(CONTRIBUTING.read_text(encoding="utf-8"))
LAYERS = with_package_inits(layer_of_each_module(ROWS))


def test_the_table_has_rows():
    assert len(ROWS) >= 10, ROWS


def test_every_module_has_a_row_in_the_table():
    missing = sorted(set(MODULES) - set(layer_of_each_module(ROWS)) - {"course_lib", "course_lib.nn"})
    assert not missing, (f"{missing} are not in CONTRIBUTING.md's architecture table: add a row for each (or "
                         f"put it in an existing row), at the layer it belongs to")


def upward_imports(module: str, imports, layers: dict[str, int]) -> list[str]:
    """The imports of ``module`` that point below its row, or to a module without a row."""
    layer = layers[module]
    upward = []
    for target, line, _ in imports:
        target_layer = layers.get(target)
        if target_layer is None or target_layer > layer:
            where = "no row" if target_layer is None else f"row {target_layer + 1} ({ROWS[target_layer][0]})"
            upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}, {where}")
    return upward


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    """Each own import points to the module's row or a row above it in CONTRIBUTING.md's table."""
    if module not in LAYERS:
        pytest.skip(f"{module} has no row (test_every_module_has_a_row_in_the_table fails for it)")
    upward = upward_imports(module, own_imports(module), LAYERS)
    layer = LAYERS[module]
    assert not upward, (f"{module} is in row {layer + 1} ({ROWS[layer][0]}) of CONTRIBUTING.md's table and may "
                        f"import only from its row and those above: " + "; ".join(upward))


def test_own_imports_form_no_cycle():
    graph = {module: {target for target, _, _ in own_imports(module) if target in MODULES} for module in MODULES}
    for first, second in CYCLES_PENDING:
        graph[first].discard(second)
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            raise AssertionError("an import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("module", sorted(set(MODULES) - LAZY_OWN_IMPORTS_PENDING))
def test_own_imports_are_at_the_top(module):
    lazy = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
            for target, line, at_top in own_imports(module) if not at_top]
    assert not lazy, ("import course_lib's own modules at the top of the module, where the layering shows: "
                      + "; ".join(lazy))


def test_the_checker_finds_upward_and_lazy_imports():
    """The checker itself, on a made-up nn/unet.py: relative imports resolved, rows compared, lazy ones seen."""
    source = ("import torch\n\nfrom ..checks import check_choice\nfrom ..pipeline import StableDiffusion\n\n\n"
              "def f():\n    from . import attention\n    from course_lib import __version__\n")
    imports = own_imports("course_lib.nn.unet", source)
    assert imports == [("course_lib.checks", 3, True), ("course_lib.pipeline", 4, True),
                       ("course_lib.nn.attention", 8, False), ("course_lib", 9, False)]
    layers = layer_of_each_module([["checks.py"], ["nn/"], ["pipeline.py"]])
    assert layers["course_lib.nn.unet"] == layers["course_lib.nn.attention"] == 1
    layers["course_lib"] = 0  # a package __init__ importing checks.py at most
    upward = upward_imports("course_lib.nn.unet", imports, layers)
    assert len(upward) == 1 and "imports course_lib.pipeline" in upward[0] and "unet.py:4" in upward[0]
    layers["course_lib"] = 2  # once it imports pipeline.py, `from course_lib import __version__` is upward too
    assert len(upward_imports("course_lib.nn.unet", imports, layers)) == 2


def test_the_table_reader_reads_backticked_names():
    text = ("## Architecture as built\n\n| module | what |\n|---|---|\n| `checks.py` | checks |\n"
            "| `nn/unet.py`, `nn/attention.py` | the UNet |\n\n## Next\n| `x.py` | not in the section |\n")
    assert read_layer_table(text) == [["checks.py"], ["nn/unet.py", "nn/attention.py"]]


def test_test_modules_do_not_import_each_other():
    """Shared test helpers live in tests/_*.py modules or conftest.py, never in another test module."""
    found = []
    pattern = re.compile(r"^[ \t]*(?:from|import)[ \t]+(test_\w+)", re.M)  # also inside functions
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"tests/{path.name}:{text.count(chr(10), 0, match.start()) + 1} imports {match.group(1)}"
                  for match in pattern.finditer(text)]
    assert not found, "move what test modules share into a tests/_*.py module: " + "; ".join(found)
