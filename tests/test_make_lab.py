"""make lab and make app on a fresh clone serve their pages, also as root (containers, lab machines, CI).

The clone reuses this checkout's virtual environment (VENV=...; make's -o keeps its install stamp
as it is), so nothing is installed.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)  # the virtual environment running the tests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0, reason="no make"),
    pytest.mark.skipif(not (VENV / "bin" / "jupyter").exists(), reason="no JupyterLab in the virtual environment"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(clone: Path, target: str, port: int, url: str, timeout: float = 120) -> str:
    """Start ``make TARGET`` in the clone, wait until ``url`` answers 200, stop it; return what make printed."""
    venv = str(VENV)
    make = ["make", "-o", f"{venv}/.course-installed", target, f"VENV={venv}", f"APP_PORT={port}",
            f"LAB_ARGS=--no-browser --port={port} --ServerApp.token= --ServerApp.password= --ServerApp.ip=127.0.0.1"]
    log = clone / f"{target}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(make, cwd=clone, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, HOME=str(clone)))
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert process.poll() is None, f"make {target} stopped:\n{log.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(url, timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"make {target} served nothing in {timeout} s:\n" \
                                                    f"{log.read_text()[-3000:]}"
                time.sleep(1)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return log.read_text()


def test_make_lab_and_app_serve_on_a_fresh_clone(tmp_path):
    clone = tmp_path / "course"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    port = _free_port()
    printed = _serve(clone, "lab", port, f"http://127.0.0.1:{port}/lab")
    assert "Running as root is not recommended" not in printed
    if os.geteuid() == 0:
        assert "Running as root (a container or a lab machine?): starting JupyterLab with --allow-root." in printed
    port = _free_port()
    printed = _serve(clone, "app", port, f"http://127.0.0.1:{port}/")
    assert f"open http://localhost:{port}/" in printed
