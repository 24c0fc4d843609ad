"""The widgets in a real browser: lessons 05 and 08 in JupyterLab, and the Voilà guidance explorer;
the Chinese lesson 01 (notebooks/zh/) in JupyterLab and the Chinese explorer (app/zh/) in Voilà.

JupyterLab (with a random token) and Voilà are started on 127.0.0.1, on copies of the notebooks
with their outputs cleared, so the committed notebooks are never written to. Debian's Chromium
(``apt-get install chromium``; ``.ci/run`` installs it when missing) is driven headless by
Playwright for Python through ``executable_path``: Playwright's own browsers are never downloaded.

Each lesson is run as a learner runs it (Run > Run All Cells); then the guidance slider is moved
with the arrow keys on its handle, and the test checks that the picture changed and that no
error appeared. The Voilà page must show the explorer and no code. In Chinese, the lesson's heading
and its checks' verdicts, and the explorer's labels (引导系数 on the slider), must be Chinese. The
five runs are started together by one fixture (their kernels run on one thread each), and each test
then waits for its own page: the module takes about as long as lesson 05 alone (on a busy 2-core CPU
about 95 s for the three English runs, 170 s when lesson 05's guidance sweeps are not yet in
artifacts/cache/, which the run fills; all five runs 198 s at a load of 6 to 15, sweeps cached).

Screenshots go to ``artifacts/browser/`` (git-ignored): ``<name>.png`` (the widget after the
move), ``<name>-image-before.png`` and ``-after.png``; on a failure ``<name>-failure.png`` (the
whole page) and ``<name>-console.txt`` (the browser console), beside ``jupyterlab.log``,
``voila.log`` and ``voila_zh.log``. The whole module is skipped, saying why, where Chromium or
Playwright is missing.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts JupyterLab and Voila and drives Chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
APP = ROOT / "app" / "guidance_explorer.ipynb"
APP_ZH = ROOT / "app" / "zh" / "guidance_explorer.ipynb"
ARTIFACTS = ROOT / "artifacts" / "browser"
LESSON_05 = "05_classifier_free_guidance.ipynb"
LESSON_08 = "08_stable_diffusion_pipeline.ipynb"
LESSON_01_ZH = "zh/01_forward_diffusion.ipynb"   # under notebooks/, as JupyterLab's path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium on this machine: apt-get install chromium (.ci/run does it) to run the browser tests",
                allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed: pip install -e '.[test]'")

SERVER_START_S = 90   # JupyterLab or Voilà answering, a kernel started (about 10 s on a busy 2-core machine)
RUN_S = 300           # a notebook run to the end: lesson 05 takes 1-2 minutes on a 2-core CPU
WIDGET_S = 30         # a slider move shows a cached picture: well under a second
VIEWPORT = {"width": 1280, "height": 1800}   # tall: a whole explorer fits on screen, and in its screenshot

# Lesson 05 builds its slider and picture with plain ipywidgets: they are found by the slider's
# label, as a learner finds them. course_lib.widgets marks its widgets with CSS classes.
LESSON_05_SLIDER = ".widget-slider:has(> label.widget-label:text-is('guidance'))"
LESSON_05_IMAGE = ".widget-vbox:has(.widget-slider) img.widget-image"
EXPLORER = ".course-guidance-explorer"
EXPLORER_SLIDER = ".course-guidance-slider"
EXPLORER_IMAGE = ".course-guidance-image"
EXPLORER_ERROR = ".course-guidance-error"     # the explorer shows a failure as a status line, with this class
EXPLORER_STATUS = ".course-guidance-status"
# Lesson 01's slider noises the digits to any t (its label is the symbol t in both languages)
LESSON_01_SLIDER = ".widget-slider:has(> label.widget-label:text-is('t'))"
LESSON_01_IMAGE = ".widget-vbox:has(.widget-slider) img.widget-image"
CHINESE = re.compile(r"[\u4e00-\u9fff]")

# JupyterLab shows an error output as stderr; a widget that fails to render says so in its output.
FIND_ERRORS_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
    .map(o => ({mime: o.getAttribute('data-mime-type') || '', text: o.innerText || ''}))
    .filter(o => (o.mime === 'application/vnd.jupyter.stderr' && /Traceback|Error/.test(o.text))
                 || /Error displaying widget|Traceback \\(most recent call last\\)/.test(o.text))
    .map(o => o.text.slice(0, 3000))"""

# Run All has finished when no code cell waits ([*]) and at least one has run; a failing cell stops
# the run, and the cells after it keep an empty prompt.
RUN_FINISHED_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
        .map(p => p.textContent.trim());
    return prompts.length > 0 && !prompts.some(p => p.includes('*')) && prompts.some(p => /\\[\\d+\\]/.test(p));
}"""
UNRUN_CELLS_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]
    .filter(c => !/\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt').textContent))
    .map(c => c.querySelector('.jp-InputArea-editor').innerText.slice(0, 200))"""


# ------------------------------------------------------------------------------------------ servers
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server in a process group of its own (stopped together with its kernels), logging to a file."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, cwd: Path, env: dict, token: str = ""):
        self.name, self.port, self.log, self.token = name, port, log, token
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = SERVER_START_S) -> "Server":
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode} before answering:\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer on port {self.port} within {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 4000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log_file.close()


def _server_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update({
        # this run's own Jupyter folders: no user configuration, password or user kernel (a "python3"
        # kernel of another environment) applies; the kernel is this environment's
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("COURSE_SD_PATH", None)                    # the course's mini-SD, whatever this machine has
    return env


def _cleared_copy(source: Path, target: Path) -> None:
    """The notebook with its outputs, execution counts and saved widget state removed."""
    notebook = json.loads(source.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"].pop("widgets", None)
    target.write_text(json.dumps(notebook, indent=1))


def _lab_settings(folder: Path) -> None:
    """JupyterLab user settings: start the notebook's kernel without asking, keep every cell in the
    page (no windowing: every prompt and output is in the DOM), fetch no news and no updates."""
    settings = {
        "notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _start_servers(servers: dict, tmp: Path, lab: bool, voila: set) -> None:
    """Start JupyterLab on cleared copies of lessons 05, 08 and the Chinese 01, and a Voilà on a
    cleared copy of each app named in ``voila`` ("voila", "voila_zh"), into ``servers`` (so that the
    caller stops whatever started, even after a failure)."""
    env = _server_env(tmp)
    if lab:
        root = tmp / "notebooks"
        (root / "zh").mkdir(parents=True)
        for name in (LESSON_05, LESSON_08, LESSON_01_ZH):
            if (NOTEBOOKS / name).is_file():
                _cleared_copy(NOTEBOOKS / name, root / name)
        _lab_settings(tmp / "lab-settings")
        token, port = secrets.token_hex(16), _free_port()
        servers["lab"] = Server("JupyterLab", [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={tmp / 'lab-settings'}", f"--LabApp.workspaces_dir={tmp / 'lab-workspaces'}",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ], port, ARTIFACTS / "jupyterlab.log", root, env, token)
    for name, app in APPS.items():
        if name not in voila or not app.is_file():
            continue
        app_copy = tmp / name / app.name
        app_copy.parent.mkdir()
        _cleared_copy(app, app_copy)
        port = _free_port()
        servers[name] = Server(f"Voilà ({app.relative_to(ROOT)})", [
            sys.executable, "-m", "voila", str(app_copy), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True",
        ], port, ARTIFACTS / f"{name}.log", app_copy.parent, env)


# ------------------------------------------------------------------------------------------ pages
class Run:
    """One browser page and what started on it; ``error`` is what went wrong while starting it."""

    def __init__(self, browser, name: str, server: Server):
        self.name, self.server, self.error = name, server, None
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WIDGET_S * 1000)
        self.console = []
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    @contextlib.contextmanager
    def artifacts_on_failure(self):
        """On a failure, save artifacts/browser/<name>-failure.png and <name>-console.txt."""
        try:
            if self.error is not None:
                raise self.error
            yield self.page
        except BaseException:
            with contextlib.suppress(Exception):
                self.page.screenshot(path=ARTIFACTS / f"{self.name}-failure.png", full_page=True)
            (ARTIFACTS / f"{self.name}-console.txt").write_text("\n".join(self.console))
            raise


def _open_and_run_all(page, lab: Server, notebook: str, workspace: str) -> None:
    """Open the notebook in a workspace of its own (nothing else restored), wait for its kernel, and
    start Run > Run All Cells as a learner does (the kernel queues every cell at once)."""
    page.goto(f"http://127.0.0.1:{lab.port}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={lab.token}")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=SERVER_START_S * 1000)
    # the status bar says "Python 3 (ipykernel) | Idle" once the kernel is started and connected
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=SERVER_START_S * 1000)
    page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu").get_by_text("Run All Cells", exact=True).click()
    page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first.wait_for()


# the run each test looks at
RUN_OF_TEST = {"test_lesson_05_guidance_slider": "lesson05", "test_lesson_08_guidance_explorer": "lesson08",
               "test_voila_guidance_explorer": "voila", "test_zh_lesson_01_in_chinese": "lesson01_zh",
               "test_zh_voila_guidance_explorer_in_chinese": "voila_zh"}
LESSONS = {"lesson05": LESSON_05, "lesson08": LESSON_08, "lesson01_zh": LESSON_01_ZH}
APPS = {"voila": APP, "voila_zh": APP_ZH}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """JupyterLab and the Voilàs started together; lessons 05, 08 and the Chinese 01 and the Voilà
    pages set running together, each in a page of its own (only those of the selected tests). The
    tests then wait for their page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # getattr: the session also holds nbval's notebook cells, which have no originalname
    selected = {RUN_OF_TEST.get(getattr(item, "originalname", None)) for item in request.session.items}
    servers, runs, playwright = {}, {}, None
    try:
        _start_servers(servers, tmp_path_factory.mktemp("browser"),
                       lab=bool(selected & set(LESSONS)), voila=selected & set(APPS))
        playwright = sync_api.sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        for name, notebook in LESSONS.items():
            if name in selected and (NOTEBOOKS / notebook).is_file():
                runs[name] = Run(browser, name, servers["lab"])
                try:
                    _open_and_run_all(runs[name].page, servers["lab"].wait_ready(), notebook, name)
                except Exception as error:  # raised in its test, with the screenshot
                    runs[name].error = error
        for name in APPS:
            if name not in servers:
                continue
            runs[name] = Run(browser, name, servers[name])
            try:  # Voilà runs the notebook when the page is asked for: ask now, look in the test
                runs[name].page.goto(f"http://127.0.0.1:{servers[name].wait_ready().port}/",
                                     wait_until="commit", timeout=SERVER_START_S * 1000)
            except Exception as error:
                runs[name].error = error
        yield runs
    finally:
        for run in runs.values():
            with contextlib.suppress(Exception):
                run.context.close()
        if playwright is not None:
            playwright.stop()
        for server in servers.values():
            server.stop()


# ------------------------------------------------------------------------------------------ checks
def _wait_for_run_all(page, notebook: str) -> None:
    page.wait_for_function(RUN_FINISHED_JS, timeout=RUN_S * 1000, polling=500)
    _assert_no_errors(page, notebook)
    unrun = page.evaluate(UNRUN_CELLS_JS)
    assert not unrun, f"Run All stopped before these cells of {notebook}: {unrun}"


def _assert_no_errors(page, where: str) -> None:
    errors = page.evaluate(FIND_ERRORS_JS)
    assert not errors, f"{where} shows an error:\n" + "\n---\n".join(errors)
    failed = page.locator(EXPLORER_ERROR)
    if failed.count():
        status = failed.first.locator(EXPLORER_STATUS).inner_text()
        raise AssertionError(f"the guidance explorer in {where} reports a failure: {status}")


def _picture(image) -> bytes:
    """A screenshot of the picture once it is loaded: equal bytes, equal picture."""
    image.scroll_into_view_if_needed()
    image.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    return image.screenshot()


def _move_slider(page, slider) -> str:
    """Move the slider one notch with the arrow keys on its handle, as a learner can (left, or right
    from the leftmost notch); return the slider's new readout."""
    handle = slider.locator(".noUi-handle")
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    at_minimum = float(handle.get_attribute("aria-valuenow")) == float(handle.get_attribute("aria-valuemin"))
    handle.focus()
    page.keyboard.press("ArrowRight" if at_minimum else "ArrowLeft")
    page.wait_for_function("([el, before]) => el.innerText !== before", arg=[readout.element_handle(), before])
    return readout.inner_text()


def _check_slider_changes_picture(page, slider_selector: str, image_selector: str, around: str, name: str) -> None:
    slider = page.locator(slider_selector)
    image = page.locator(image_selector)
    assert slider.count() == 1, f"expected one guidance slider ({slider_selector}), found {slider.count()}"
    assert image.count() == 1, f"expected one guidance picture ({image_selector}), found {image.count()}"
    readout_before = slider.locator(".widget-readout").inner_text()
    source_before = image.get_attribute("src")
    picture_before = _picture(image)
    (ARTIFACTS / f"{name}-image-before.png").write_bytes(picture_before)

    readout_after = _move_slider(page, slider)
    page.wait_for_function("([img, before]) => img.getAttribute('src') !== before",
                           arg=[image.element_handle(), source_before])
    picture_after = _picture(image)
    (ARTIFACTS / f"{name}-image-after.png").write_bytes(picture_after)
    page.locator(around).first.screenshot(path=ARTIFACTS / f"{name}.png")
    assert picture_after != picture_before, (
        f"moving the guidance slider from {readout_before} to {readout_after} did not change the picture "
        f"(see artifacts/browser/{name}-image-*.png)")


def _run(runs, name: str, why_missing: str) -> Run:
    if name not in runs:
        pytest.skip(why_missing)
    return runs[name]


# ------------------------------------------------------------------------------------------ tests
def test_lesson_05_guidance_slider(runs):
    run = _run(runs, "lesson05", f"notebooks/{LESSON_05} does not exist")
    with run.artifacts_on_failure() as page:
        _wait_for_run_all(page, LESSON_05)
        _check_slider_changes_picture(page, LESSON_05_SLIDER, LESSON_05_IMAGE,
                                      f".jp-OutputArea-output:has({LESSON_05_IMAGE})", "lesson05")
        _assert_no_errors(page, LESSON_05)


def test_lesson_08_guidance_explorer(runs):
    run = _run(runs, "lesson08", f"notebooks/{LESSON_08} does not exist yet")
    with run.artifacts_on_failure() as page:
        _wait_for_run_all(page, LESSON_08)
        _check_slider_changes_picture(page, EXPLORER_SLIDER, EXPLORER_IMAGE, EXPLORER, "lesson08")
        _assert_no_errors(page, LESSON_08)


def _wait_for_voila_explorer(run: Run, page) -> str:
    """Wait for the explorer on the Voilà page; check that the page shows no error and no code;
    return the page's text."""
    try:
        page.locator(EXPLORER_IMAGE).wait_for(timeout=RUN_S * 1000)
    except sync_api.TimeoutError:
        raise AssertionError(f"the explorer did not appear in Voilà; its log:\n{run.server.log_tail()}") from None
    text = page.locator("body").inner_text()
    assert "There was an error" not in text and "Traceback" not in text, f"Voilà shows an error:\n{text[:3000]}"
    # Voilà shows the outputs and the Markdown only: no code cell, no line of the notebook's code
    code = page.locator(".jp-CodeCell .jp-InputArea, .jp-CodeMirrorEditor, .cm-editor, .jp-InputPrompt")
    assert code.count() == 0, f"Voilà shows {code.count()} code cell elements"
    assert "guidance_explorer(" not in text and "import " not in text, "Voilà shows the notebook's code"
    return text


def test_voila_guidance_explorer(runs):
    run = _run(runs, "voila", f"{APP.relative_to(ROOT)} does not exist")
    with run.artifacts_on_failure() as page:
        _wait_for_voila_explorer(run, page)
        _check_slider_changes_picture(page, EXPLORER_SLIDER, EXPLORER_IMAGE, EXPLORER, "voila")
        _assert_no_errors(page, "the Voilà explorer")


def test_zh_lesson_01_in_chinese(runs):
    """The Chinese lesson 01 runs in JupyterLab: a Chinese heading, its slider noises the digits,
    and its checks give their verdicts in Chinese (✅ 正确), none in English."""
    run = _run(runs, "lesson01_zh", f"notebooks/{LESSON_01_ZH} does not exist")
    with run.artifacts_on_failure() as page:
        _wait_for_run_all(page, LESSON_01_ZH)
        heading = page.locator(".jp-MarkdownOutput h1").first.inner_text()
        assert "前向过程" in heading, f"the Chinese lesson 01's heading is {heading!r}, expected 前向过程 in it"
        _check_slider_changes_picture(page, LESSON_01_SLIDER, LESSON_01_IMAGE,
                                      f".jp-OutputArea-output:has({LESSON_01_IMAGE})", "lesson01_zh")
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        verdicts = [text.strip() for text in outputs if text.strip() and text.strip()[0] in "✅❌⏳"]
        assert any(v.startswith("✅ 正确") for v in verdicts), f"no '✅ 正确' verdict in the Chinese lesson 01: {verdicts}"
        english = [v for v in verdicts if not CHINESE.search(v) or re.match(r"\W*(Correct|Not yet|Not done)", v)]
        assert not english, f"verdicts in English in the Chinese lesson 01: {english}"
        _assert_no_errors(page, LESSON_01_ZH)


def test_zh_voila_guidance_explorer_in_chinese(runs):
    """The Chinese explorer under Voilà: Chinese labels (引导系数 on the slider), and the slider
    changes the picture and the Chinese status line."""
    run = _run(runs, "voila_zh", f"{APP_ZH.relative_to(ROOT)} does not exist")
    with run.artifacts_on_failure() as page:
        _wait_for_voila_explorer(run, page)
        label = page.locator(f"{EXPLORER_SLIDER} label.widget-label").inner_text().strip()
        assert label == "引导系数", f"the explorer's slider is labelled {label!r}, expected 引导系数"
        explorer = page.locator(EXPLORER).inner_text()
        for english in ("guidance scale", "negative prompt", "Generate"):
            assert english not in explorer, f"the Chinese explorer shows {english!r}:\n{explorer[:2000]}"
        _check_slider_changes_picture(page, EXPLORER_SLIDER, EXPLORER_IMAGE, EXPLORER, "voila_zh")
        # the status line names the scale shown: "引导系数 <scale> · <how it was sampled>"
        sync_api.expect(page.locator(EXPLORER_STATUS)).to_have_text(re.compile(r"^引导系数 \S+ · .*[\u4e00-\u9fff]"))
        _assert_no_errors(page, "the Chinese Voilà explorer")
