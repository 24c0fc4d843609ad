"""course_lib.files (atomic writes) and course_lib.pixels (the [-1, 1] <-> 0..255 conventions)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from course_lib.files import atomic_write, atomic_write_json, atomic_write_text, remove_stale_temporaries
from course_lib.pixels import from_uint8, from_unit, to_uint8, to_unit


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2, "名字": "中文"})
    assert target.read_text(encoding="utf-8") == '{\n  "x": 2,\n  "名字": "中文"\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_killed_writer_leaves_the_old_file_and_its_temporary_is_cleaned(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    # a child process dies (os._exit) after writing its temporary file, before the rename
    code = ("import os, sys; from course_lib.files import atomic_write\n"
            "def die(p):\n    p.write_text('new'); os._exit(9)\n"
            f"atomic_write({str(target)!r}, die)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    leftovers = [p for p in os.listdir(tmp_path) if p != "a.txt"]
    assert target.read_text() == "old" and len(leftovers) == 1 and leftovers[0].startswith(".a.txt.tmp-")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == leftovers and os.listdir(tmp_path) == ["a.txt"]


def test_temporaries_of_a_running_process_are_kept(tmp_path):
    mine = tmp_path / f".b.tmp-{os.getpid()}-0123abcd"
    mine.write_text("in progress")
    assert remove_stale_temporaries(tmp_path) == [] and mine.exists()


def test_pixel_round_trip_and_diffusers_convention():
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1).repeat(3, axis=3)   # (N, H, W, C)
    x = from_uint8(pixels)
    assert x.shape == (4, 3, 8, 8) and x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x), pixels)                                # exact round trip
    # to_unit is diffusers' denormalize: x / 2 + 0.5 clipped to [0, 1]
    y = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert torch.equal(to_unit(y), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
    assert torch.allclose(from_unit(to_unit(y[1:5])), y[1:5])
    assert to_uint8(torch.zeros(3, 2, 2)).shape == (2, 2, 3)                  # one image: (C, H, W) -> (H, W, C)


def test_from_uint8_refuses_floats():
    with pytest.raises(TypeError, match="from_unit"):
        from_uint8(np.zeros((2, 2, 3), dtype=np.float32))
