"""Run the code cells of lessons in a plain Python process, for a machine without Jupyter.

    python benchmarks/run_notebook_cells.py notebooks/08_stable_diffusion_pipeline.ipynb notebooks/10_making_it_fast.ipynb

Each notebook's code cells run in order in one namespace, from the notebooks folder (as Jupyter
runs them), with matplotlib drawing to no screen. Prints each cell's time and printed output,
stops a notebook at its first error (printing the traceback) and goes on with the next one.
Exits with 1 if a notebook failed. ``--modules`` lists the third-party packages they imported.
IPython magics (lines starting with % or !) are not supported and make the cell fail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path


def run_notebook(path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    here = Path.cwd()
    os.chdir(path.parent)
    print(f"=== {path.name}: {len(cells)} code cells", flush=True)
    began = time.perf_counter()
    try:
        for index, cell in enumerate(cells):
            source = "".join(cell["source"])
            start = time.perf_counter()
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    exec(compile(source, f"{path.name}[code cell {index}]", "exec"), namespace)
                plt.close("all")
            except Exception:  # noqa: BLE001 - report and stop this notebook
                print(printed.getvalue(), end="")
                print(f"--- cell {index} FAILED after {time.perf_counter() - start:.1f} s:\n{source}\n")
                traceback.print_exc(file=sys.stdout)
                return False
            print(f"--- cell {index}: {time.perf_counter() - start:.1f} s")
            text = printed.getvalue()
            if text:
                print(text.rstrip()[-3000:])
    finally:
        os.chdir(here)
    print(f"=== {path.name}: all {len(cells)} cells ran in {time.perf_counter() - began:.1f} s", flush=True)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--modules", action="store_true", help="list the third-party packages imported")
    args = parser.parse_args(argv)
    before = set(sys.modules)
    ok = all([run_notebook(path.resolve()) for path in args.notebooks])
    if args.modules:
        stdlib = set(sys.stdlib_module_names)
        names = sorted({m.split(".")[0] for m in set(sys.modules) - before} - stdlib)
        print("third-party packages imported:", " ".join(n for n in names if not n.startswith("_")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
