"""How many threads `python -m course_lib generate` should use: wall time of one command with 1 and 2
threads, on an otherwise idle CPU and with one core kept busy by another process.

    .venv/bin/python benchmarks/generate_threads.py [--repeats 3] [--model mini-sd] [--json out.json]

Each run is the whole command, start-up included, as a learner types it: 16 images, 50 DDIM steps.
The "busy" condition starts one process spinning on the CPU (a pure-Python loop) for the length of
the run. The machine's load average before each run is printed with it: on a shared machine, read
the numbers with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "mini-sd": ["--model", "mini-sd", "--prompt", "a large red circle in the center"],
    "digits": ["--model", "digits"],
}


def one_run(model: str, threads: int, busy: bool) -> dict:
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "course_lib", "generate", *COMMANDS[model], "--num-images", "16",
                            "--steps", "50", "--device", "cpu", "--no-progress", "--threads", str(threads),
                            "--out", f"{folder}/grid.png"], cwd=REPO, check=True, capture_output=True)
            return {"threads": threads, "busy": busy, "seconds": round(time.perf_counter() - start, 2),
                    "load_before": round(load, 2)}
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=list(COMMANDS), default="mini-sd")
    parser.add_argument("--json", help="write the runs here")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):  # interleaved, so that a change of load hits every condition alike
        for busy in (False, True):
            for threads in (1, 2):
                runs.append(one_run(args.model, threads, busy))
                print(runs[-1], flush=True)
    for busy in (False, True):
        for threads in (1, 2):
            times = [run["seconds"] for run in runs if run["threads"] == threads and run["busy"] == busy]
            print(f"{'other core busy' if busy else 'no extra load  '}  threads {threads}: median "
                  f"{statistics.median(times):.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "cpu_count": os.cpu_count(), "runs": runs},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
