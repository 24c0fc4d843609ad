"""The translation files: where they live, how they are read and written, the fingerprint.

One YAML file per English notebook and language, at the notebook's path under
``translations/<language>/`` (``notebooks/01_forward_diffusion.ipynb`` ->
``translations/zh/notebooks/01_forward_diffusion.yaml``)::

    notebook: notebooks/01_forward_diffusion.ipynb
    cells:                        # the Markdown cells, in the notebook's order, keyed by cell id
    - id: 3bb9187a
      fingerprint: 5f0c2d7e9a1b3c4d   # sha256 of `en`, the English this translation was made from
      en: |-
        # 01 · The forward process: from a digit to noise
      zh: |-
        # 01 · 前向过程：从数字到噪声
    strings:                      # the labels the code cells pass to tr(...)
    - en: digits (16x16, in [-1, 1])
      zh: 手写数字（16×16，取值范围 [-1, 1]）

Translators edit the ``zh`` texts only; ``en`` and ``fingerprint`` are written by
``python -m course_lib.i18n update`` and ``accept``. YAML keeps LaTeX readable: in a ``|``
block a backslash is a backslash. The library's own messages use the same format without
``notebook`` and ``cells``: ``course_lib/i18n/zh.yaml``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_text
PACKAGE_DIR = Path(__file__).resolve().parent
# the repository's translation files (course_lib is installed from the repository, pip install -e .)
TRANSLATIONS_DIR = PACKAGE_DIR.parents[1] / "translations"

__all__ = ["ROOT", "CellTranslation", "StringTranslation", "TranslationFile", "TranslationFileError",
           "fingerprint", "library_catalogue_path", "translation_files", "translation_path",
           "read_translation_file", "write_translation_file", "read_strings"]

ROOT = TRANSLATIONS_DIR.parent   # the repository


class TranslationFileError(ValueError):
    """A translation file that cannot be read: the message names the file and the entry."""


def fingerprint(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``text`` (UTF-8): what a translation was made from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class CellTranslation:
    """One Markdown cell: its id, the English it was translated from (and that text's fingerprint), the translation."""

    id: str
    en: str
    fingerprint: str
    text: str | None = None   # None: not translated yet


@dataclass
class StringTranslation:
    """One message passed to ``tr(...)``: the English template and its translation."""

    en: str
    text: str | None = None


@dataclass
class TranslationFile:
    """A notebook's translation into one language (or, without ``notebook``, a catalogue of messages)."""

    path: Path
    language: str
    notebook: str | None = None          # the English notebook, relative to the repository
    cells: list[CellTranslation] = field(default_factory=list)
    strings: list[StringTranslation] = field(default_factory=list)

    def cell(self, cell_id: str) -> CellTranslation | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    def string_map(self) -> dict[str, str | None]:
        return {s.en: s.text for s in self.strings}


def library_catalogue_path(language: str) -> Path:
    """``course_lib/i18n/<language>.yaml``: the library's messages."""
    return PACKAGE_DIR / f"{language}.yaml"


def translation_files(language: str, translations_dir: Path = TRANSLATIONS_DIR) -> list[Path]:
    """Every translation file of ``language``, sorted."""
    folder = translations_dir / language
    return sorted(folder.rglob("*.yaml")) if folder.is_dir() else []


def translation_path(notebook: Path, language: str, root: Path = ROOT) -> Path:
    """``notebooks/01_x.ipynb`` -> ``translations/<language>/notebooks/01_x.yaml`` (under ``root``)."""
    relative = Path(notebook).resolve().relative_to(root.resolve())
    return root / "translations" / language / relative.with_suffix(".yaml")


# ------------------------------------------------------------------------------------ reading
def _load_yaml(path: Path):
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as file:
            return yaml.load(file, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as error:
        raise TranslationFileError(f"{path}: not valid YAML ({error}). Fix the file; the lines around the "
                                   f"position named above usually have a wrong indentation.") from error


def _text(value, path: Path, where: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TranslationFileError(f"{path}, {where}: expected text, got {value!r} of type {type(value).__name__}. "
                                   f"Quote it (YAML reads yes, no, 1.0 or a bare number as other types).")
    return value


def read_translation_file(path: Path, language: str | None = None) -> TranslationFile:
    """Read and validate a translation file; errors name the file and the entry."""
    path = Path(path)
    if language is None:
        language = path.stem if path.resolve().parent == PACKAGE_DIR else _language_of(path)
    data = _load_yaml(path) or {}
    if not isinstance(data, dict):
        raise TranslationFileError(f"{path}: expected a mapping with 'notebook', 'cells' and 'strings', "
                                   f"got a {type(data).__name__}.")
    unknown = set(data) - {"notebook", "cells", "strings"}
    if unknown:
        raise TranslationFileError(f"{path}: unknown keys {sorted(unknown)}; a translation file has "
                                   f"'notebook', 'cells' and 'strings'.")
    result = TranslationFile(path=path, language=language, notebook=data.get("notebook"))
    for index, entry in enumerate(data.get("cells") or []):
        where = f"cells[{index}]"
        if not isinstance(entry, dict) or not {"id", "en", "fingerprint"} <= set(entry):
            raise TranslationFileError(f"{path}, {where}: a cell needs 'id', 'fingerprint', 'en' and '{language}', "
                                       f"got {entry!r}. Run `python -m course_lib.i18n update` to add cells.")
        cell_id = _text(entry["id"], path, where + ".id")
        result.cells.append(CellTranslation(
            id=cell_id, en=_text(entry["en"], path, f"cell {cell_id}, en"),
            fingerprint=_text(entry["fingerprint"], path, f"cell {cell_id}, fingerprint"),
            text=_text(entry.get(language), path, f"cell {cell_id}, {language}", optional=True)))
    for index, entry in enumerate(data.get("strings") or []):
        where = f"strings[{index}]"
        if not isinstance(entry, dict) or "en" not in entry:
            raise TranslationFileError(f"{path}, {where}: a string needs 'en' and '{language}', got {entry!r}.")
        english = _text(entry["en"], path, where + ".en")
        result.strings.append(StringTranslation(
            en=english, text=_text(entry.get(language), path, f"string {english!r}, {language}", optional=True)))
    return result


def _language_of(path: Path) -> str:
    """translations/<language>/... -> <language>."""
    parts = Path(path).resolve().parts
    if "translations" in parts and parts.index("translations") + 1 < len(parts):
        return parts[parts.index("translations") + 1]
    raise TranslationFileError(f"{path}: cannot tell the language; translation files live in translations/<language>/.")


def read_strings(path: Path, language: str | None = None) -> dict[str, str | None]:
    """English message -> translation (or None) of a translation file or the library catalogue."""
    return read_translation_file(path, language).string_map()


# ------------------------------------------------------------------------------------ writing
NOTEBOOK_HEADER = """\
# {notebook} in {language}, built into {built} by `make translations`.
# Edit the `{language}` texts only (Markdown cells whole; formulas and `code` exactly as in the English;
# labels keep every {{field}}). `en` is the English each cell was translated from, `fingerprint` its hash:
# when the English changes, the tests show the difference; update the translation, then run
#   python -m course_lib.i18n accept {notebook} CELL_ID
# See CONTRIBUTING.md, "Translations".
"""

CATALOGUE_HEADER = """\
# course_lib's own messages in {language}: what tr("...") returns after course_lib.set_language("{language}").
# Edit the `{language}` texts only and keep every {{field}} of the English.
# `python -m course_lib.i18n missing --language {language}` lists the messages that have no entry yet.
"""


def _dump(data) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper, value: str):
        # multi-line text as a literal block: no escapes, LaTeX and Markdown read as they are
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, represent_str)
    return yaml.dump(data, Dumper=Dumper, allow_unicode=True, sort_keys=False, width=1_000_000,
                     default_flow_style=False)


def write_translation_file(translation: TranslationFile) -> Path:
    """Write ``translation`` (atomically) with the header that tells translators what to edit."""
    language = translation.language
    data: dict = {}
    if translation.notebook is not None:
        data["notebook"] = translation.notebook
        data["cells"] = [{"id": c.id, "fingerprint": c.fingerprint, "en": c.en, language: c.text}
                         for c in translation.cells]
    data["strings"] = [{"en": s.en, language: s.text} for s in translation.strings]
    if translation.notebook is not None:
        built = Path(translation.notebook).parent / language / Path(translation.notebook).name
        header = NOTEBOOK_HEADER.format(notebook=translation.notebook, language=language, built=built.as_posix())
    else:
        header = CATALOGUE_HEADER.format(language=language)
    translation.path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(translation.path, header + _dump(data))
