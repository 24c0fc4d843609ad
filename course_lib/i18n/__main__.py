"""``python -m course_lib.i18n``: build, check and update the translated notebooks.

    python -m course_lib.i18n build [NOTEBOOK ...] [--execute]   # notebooks/zh/*.ipynb (make translations)
    python -m course_lib.i18n check [NOTEBOOK ...]               # what is stale, missing or out of step
    python -m course_lib.i18n update NOTEBOOK ...                # start or extend a translation file
    python -m course_lib.i18n accept NOTEBOOK CELL_ID ...        # a stale cell's translation is updated
    python -m course_lib.i18n missing                            # library messages without a translation
    python -m course_lib.i18n glossary [--write]                 # the README tables from the glossary

NOTEBOOK is an English notebook (``notebooks/01_forward_diffusion.ipynb``); without one, build
and check take every English notebook that has a translation file. ``--language`` defaults to zh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .catalogues import ROOT, library_catalogue_path, read_strings, translation_path
from .extract import library_messages
from .glossary import load_glossary, readme_table, write_readme_tables
from .notebooks import (accept, build, check, english_notebooks, execute, needs_execution, translated_path, update,
                        write_notebook)


def _notebooks(names: list[str], language: str) -> list[Path]:
    if names:
        paths = [Path(name).resolve() for name in names]
        for path in paths:
            if not path.exists() or path.suffix != ".ipynb":
                raise SystemExit(f"{path}: not an English notebook (.ipynb); give e.g. notebooks/01_forward_diffusion.ipynb")
        return paths
    return [path for path in english_notebooks() if translation_path(path, language).exists()]


def _build(args) -> int:
    failed = 0
    for notebook in _notebooks(args.notebooks, args.language):
        built, problems = build(notebook, args.language)
        if built is None:
            failed += 1
            print(f"NOT BUILT {notebook.relative_to(ROOT)}:")
            print("\n".join(f"  {problem}" for problem in problems))
            continue
        target = write_notebook(built, translated_path(notebook, args.language))
        pending = needs_execution(notebook, built)
        if args.execute and pending:
            print(f"executing {target.relative_to(ROOT)} ...", flush=True)
            execute(target, timeout=args.timeout)
            pending = False
        print(f"built {target.relative_to(ROOT)}" + (": not executed yet (--execute runs it)" if pending else ""))
    return 1 if failed else 0


def _check(args) -> int:
    terms = load_glossary()
    path = library_catalogue_path(args.language)
    library = read_strings(path) if path.exists() else {}
    notebooks = [Path(n).resolve() for n in args.notebooks] or english_notebooks()
    count, untranslated = 0, []
    for notebook in notebooks:
        problems = check(notebook, args.language, terms=terms, library=library)
        if [p.kind for p in problems] == ["no-translation"]:
            untranslated.append(notebook.relative_to(ROOT).as_posix())
            continue
        for problem in problems:
            print(f"[{problem.kind}] {problem}")
        count += len(problems)
    if untranslated:
        print(f"not translated into {args.language} yet: {', '.join(untranslated)}")
    print(f"{count} problem(s)")
    return 1 if count else 0


def _missing(args) -> int:
    path = library_catalogue_path(args.language)
    catalogue = read_strings(path) if path.exists() else {}
    used = library_messages(Path(__file__).resolve().parents[1])
    missing = {message: where for message, where in used.items() if not catalogue.get(message)}
    unused = [message for message in catalogue if message not in used]
    for message, where in missing.items():
        print(f"missing: {message!r}  ({', '.join(where)})")
    for message in unused:
        print(f"unused: {message!r} (no tr(...) in course_lib uses it yet)")
    print(f"{len(missing)} message(s) of course_lib without a {args.language} text in {path.relative_to(ROOT)}, "
          f"{len(unused)} unused entr{'y' if len(unused) == 1 else 'ies'}")
    return 1 if missing else 0


def _glossary(args) -> int:
    terms = load_glossary()
    if args.write:
        changed = write_readme_tables(terms)
        print("rewrote " + ", ".join(str(p.relative_to(ROOT)) for p in changed) if changed else "the tables were up to date")
    else:
        print(readme_table(terms, "en"), readme_table(terms, "zh"), sep="\n\n")
    return 0


def _update(args) -> int:
    for name in args.notebooks:
        translation = update(Path(name).resolve(), args.language)
        print(f"updated {translation.path.relative_to(ROOT)}")
    return 0


def _accept(args) -> int:
    accepted = accept(Path(args.notebook).resolve(), args.cell_ids, args.language)
    print("accepted", ", ".join(accepted))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.i18n", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--language", default="zh", help="the translation's language (default zh)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = lambda name, help: commands.add_parser(name, help=help, parents=[common])  # noqa: E731

    command = add("build", "build the translated notebooks from the English ones and the translation files")
    command.add_argument("notebooks", nargs="*")
    command.add_argument("--execute", action="store_true", help="run the notebooks whose code changed (no outputs yet)")
    command.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (default 600)")
    command.set_defaults(run=_build)

    command = add("check", "list what is stale, missing or out of step")
    command.add_argument("notebooks", nargs="*")
    command.set_defaults(run=_check)

    command = add("update", "create or extend translation files (new cells and labels, untranslated)")
    command.add_argument("notebooks", nargs="+")
    command.set_defaults(run=_update)

    command = add("accept", "after updating stale translations: record the English they now translate")
    command.add_argument("notebook")
    command.add_argument("cell_ids", nargs="+")
    command.set_defaults(run=_accept)

    command = add("missing", "course_lib's messages without a translation")
    command.set_defaults(run=_missing)

    command = add("glossary", "print the README glossary tables, or --write them into both READMEs")
    command.add_argument("--write", action="store_true")
    command.set_defaults(run=_glossary)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:   # a problem the message explains (a wrong cell id, a broken file)
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
