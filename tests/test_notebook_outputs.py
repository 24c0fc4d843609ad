"""Checked notebook outputs hold no floating-point noise, so nbval passes on any CPU and thread count.

nbval compares the output of every cell marked ``# NBVAL_CHECK_OUTPUT`` with the committed one,
character for character. A value that depends on floating-point rounding (the order of a sum, a
vectorised kernel, the number of threads) differs between CPUs: lesson 02 once printed
``1.7e-06`` here and ``1.9e-06`` on an AMD EPYC. Such outputs must print a comparison with a
tolerance, a boolean or a coarsely rounded value instead. This test reads the committed outputs
of every notebook under notebooks/ (translations included) and refuses

* a number in scientific notation with decimals in its mantissa (``1.7e-06``; ``1e-4`` is fine),
* a decimal number with 6 or more significant digits (``0.123456``, ``31.41592``),
* a raw tensor or array (``tensor([...])``, ``array([...])``), whose digits are float noise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [path for path in NOTEBOOKS if ".ipynb_checkpoints" not in path.parts]

SCIENTIFIC = re.compile(r"(?<![\w.])\d+\.\d+[eE][-+]?\d+")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
RAW_ARRAY = re.compile(r"\b(tensor|array)\(")


def noise_in(text: str) -> list[str]:
    """The pieces of ``text`` that look like floating-point noise (see the module's docstring)."""
    found = [match.group() for match in SCIENTIFIC.finditer(text)]
    without_scientific = SCIENTIFIC.sub(" ", text)
    for match in DECIMAL.finditer(without_scientific):
        digits = match.group().replace(".", "").lstrip("0")
        if len(digits) >= 6:
            found.append(match.group())
    found += [match.group() + "...)" for match in RAW_ARRAY.finditer(text)]
    return found


def checked_outputs(path: Path) -> list[tuple[int, str]]:
    """(cell index, text) of each output of the cells marked # NBVAL_CHECK_OUTPUT."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    outputs = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code" or "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                outputs.append((index, "".join(output["text"])))
            elif "text/plain" in output.get("data", {}):
                outputs.append((index, "".join(output["data"]["text/plain"])))
    return outputs


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: str(path.relative_to(path.parents[1])))
def test_checked_outputs_hold_no_float_noise(path):
    problems = [f"cell {index}: {', '.join(noise)}" for index, text in checked_outputs(path)
                if (noise := noise_in(text))]
    assert not problems, (f"{path.name}: checked outputs (# NBVAL_CHECK_OUTPUT) print values that depend on "
                          f"floating-point rounding, which differ between CPUs and thread counts: {'; '.join(problems)}. "
                          f"Print a comparison with a tolerance, a boolean or a coarsely rounded value instead.")


@pytest.mark.parametrize("text, expected", [
    ("largest gap 1.7e-06; after the last step 0.037", ["1.7e-06"]),
    ("SNR at t=T-1: 4.04e-05", ["4.04e-05"]),
    ("relative error < 1e-4: True", []),
    ("PSNR 31.0 dB, s = 0.874, t = 749.25, 859,520,964 parameters", []),
    ("loss 0.1234567 and 31.41592 dB", ["0.1234567", "31.41592"]),
    ("x = tensor([0.1000, 0.2000])", ["tensor(...)"]),
    ("version 1.2.3 and model v1.5", []),
])
def test_the_scan_finds_noise_and_only_noise(text, expected):
    assert noise_in(text) == expected
