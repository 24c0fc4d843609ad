# The course's two commands:  make lab  (open the notebooks)  and  make test  (check everything);
# make app  serves the guidance explorer as a web page for a lecture.
#
# Variables a user may override on the command line:
#   PYTHON  the interpreter that creates the virtual environment (3.10 to 3.12)
#   TORCH   the PyTorch requirement installed first. The default is the CPU build pinned for the
#           course machines; on a CUDA machine use for example
#             make lab TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
#           or TORCH=torch to take whatever build pip picks for your platform.
#   VENV    where the virtual environment lives (default .venv)
#   APP_PORT  the port of  make app  (default 8866)
#   LAB_ARGS  more options for JupyterLab, e.g.  make lab LAB_ARGS="--no-browser --port=8899"
#   STUDENT_DIR, NBGRADER_DIR  where  make student  and  make nbgrader-source  write (student, course)
#   LANG    the course's language for  make lab  and  make app: en (default) or zh, the lessons of
#           notebooks/zh with JupyterLab's own menus in Chinese:  make lab LANG=zh  (or COURSE_LANG=zh)
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
STUDENT_DIR ?= student
NBGRADER_DIR ?= course
APP_PORT ?= 8866

BIN := $(VENV)/bin

# make lab LANG=zh: on make's command line LANG is the course's language, not a locale, so the
# programs started below do not get it (an unknown locale "zh" would upset them).
ifeq ($(origin LANG),command line)
COURSE_LANG := $(LANG)
unexport LANG
endif
COURSE_LANG ?= en
ifeq ($(filter $(COURSE_LANG),en zh),)
$(error LANG=$(COURSE_LANG): the course speaks en (the default) and zh)
endif
# the lessons and the explorer in that language; for zh, JupyterLab's settings with its menus in Chinese
LESSONS_DIR := notebooks$(if $(filter zh,$(COURSE_LANG)),/zh)
APP_DIR := app$(if $(filter zh,$(COURSE_LANG)),/zh)
LAB_LANGUAGE := $(if $(filter zh,$(COURSE_LANG)),--LabApp.app_settings_dir=$(CURDIR)/translations/jupyterlab/zh)

STAMP := $(VENV)/.course-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup lab app test unit notebooks student nbgrader-source translations info clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $@

# JupyterLab refuses to start as root ("Running as root is not recommended"), which is how containers,
# lab machines and cloud notebooks run it: there make lab passes --allow-root and says so. (Voila has
# no such check.) LAB_ARGS adds options, e.g. make lab LAB_ARGS="--no-browser --port=8899".
IS_ROOT := $(filter 0,$(shell id -u 2>/dev/null))
LAB_ARGS ?=

lab: $(STAMP)
	@$(if $(IS_ROOT),echo "Running as root (a container or a lab machine?): starting JupyterLab with --allow-root.",true)
	$(BIN)/jupyter lab --notebook-dir=$(LESSONS_DIR) $(LAB_LANGUAGE) $(if $(IS_ROOT),--allow-root) $(LAB_ARGS)

# The guidance explorer of lesson 08 as a web page (Voila: the widgets, no code), on the course's
# mini-SD; on Stable Diffusion v1.5 when COURSE_SD_PATH names a folder with its weights.
app: $(STAMP)
	@echo "The guidance explorer: open http://localhost:$(APP_PORT)/ in a browser (Ctrl-C stops it)."
	$(BIN)/voila $(APP_DIR)/guidance_explorer.ipynb --port=$(APP_PORT)

# Everything, before a commit or a release: every unit test, the slow ones too (trainings, the
# quality targets of the shipped models, nbgrader, DDP, the browser test driving lessons 05, 08 and
# the app in Chromium, and the Chinese lesson 01 and app), then every notebook executed top to
# bottom by nbval (notebooks/zh/ included), NB_WORKERS notebooks at a time (pytest-xdist; each
# notebook whole on one worker, --dist loadscope; the lessons use one thread each). The notebooks
# run even when a unit test failed; make test fails if either part did.
NB_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest tests -p no:nbval --durations=15; units=$$?; \
	$(BIN)/python -m pytest notebooks --nbval-lax -n $(NB_WORKERS) --dist loadscope --durations=10; notebooks=$$?; \
	if [ $$units -ne 0 ] || [ $$notebooks -ne 0 ]; then \
	    echo "make test: unit tests exit $$units, notebooks exit $$notebooks"; exit 1; fi

# The quick check while changing course_lib: the unit tests without those marked slow
# (@pytest.mark.slow; nbval not loaded), two test files at a time with one thread each (pytest-xdist;
# a 2-core CPU: 48.6 s, against 76 s one at a time with torch's two threads).
unit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not slow" -p no:nbval -n 2 --dist loadscope

notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbval-lax -n $(NB_WORKERS) --dist loadscope

# Student versions of the notebooks in $(STUDENT_DIR)/ (the Chinese lessons in $(STUDENT_DIR)/zh/):
# solutions replaced by raise NotImplementedError().
student: $(STAMP)
	$(BIN)/python -m course_lib.student notebooks $(STUDENT_DIR)
	$(BIN)/python -m course_lib.student notebooks/zh $(STUDENT_DIR)/zh

# The lessons as an nbgrader course's source: solutions kept, check cells graded (see README);
# the Chinese lessons as a second assignment, lessons-zh.
nbgrader-source: $(STAMP)
	$(BIN)/python -m course_lib.student --nbgrader-source notebooks $(NBGRADER_DIR)/source/lessons
	$(BIN)/python -m course_lib.student --nbgrader-source notebooks/zh $(NBGRADER_DIR)/source/lessons-zh

# The Chinese lessons (notebooks/zh/) and explorer (app/zh/), built from the English notebooks and
# the translation files in translations/zh/, and executed where their code changed (CONTRIBUTING.md).
translations: $(STAMP)
	$(BIN)/python -m course_lib.i18n build --execute

info: $(STAMP)
	$(BIN)/python -m course_lib info

clean:
	rm -rf $(VENV) $(STUDENT_DIR) .pytest_cache
