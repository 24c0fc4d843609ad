"""The course in two languages: the language setting and the messages course_lib shows learners.

English is the default. ``course_lib.set_language("zh")`` (the first code cell of every lesson in
``notebooks/zh/`` does it), or ``COURSE_LANG=zh`` in the environment before course_lib is imported,
switches what the library prints and draws to Simplified Chinese: the checks' verdicts and hints,
widget labels, and figure labels that the lessons route through :func:`tr`.

A message is keyed by its English text, a ``str.format`` template::

    from course_lib.i18n import tr
    print("✅ " + tr("Correct: {what}", what=success))
    ax.set_title(tr("digits (16x16, in [-1, 1])"))

In English, or when a message has no Chinese entry, :func:`tr` returns the English text, so a
missing translation never breaks a lesson (``tests/test_translations.py`` lists what is missing).
A template's ``{fields}`` are filled in after the lookup; the Chinese text uses the same fields.

Where the Chinese comes from (Simplified Chinese, ``zh``):

- ``course_lib/i18n/zh.yaml``: the library's own messages (verdicts, widget labels);
- ``translations/zh/**/*.yaml``, the ``strings`` of each lesson's translation file: the labels
  that a lesson's code cells pass to :func:`tr` (``course_lib.i18n.notebooks`` builds the Chinese
  notebooks from the same files).

A string that is defined before the language is known (a module constant) is marked with
:func:`translatable` where it is written and passed to :func:`tr` where it is shown.
"""

from __future__ import annotations

import os
import string
import warnings
from functools import lru_cache
from pathlib import Path

from . import catalogues
from .catalogues import PACKAGE_DIR, TRANSLATIONS_DIR  # noqa: F401 (re-exported)

__all__ = ["LANGUAGES", "DEFAULT_LANGUAGE", "set_language", "get_language", "normalize_language",
           "tr", "translatable", "catalogue", "template_fields", "TRANSLATIONS_DIR"]

# code -> the language's own name; the first is the default
LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT_LANGUAGE = "en"

# other spellings of the codes (BCP 47 tags, POSIX locales) -> the course's code
_ALIASES = {"zh-cn": "zh", "zh_cn": "zh", "zh-hans": "zh", "zh-hans-cn": "zh", "zh-sg": "zh", "chinese": "zh",
            "en-us": "en", "en_us": "en", "en-gb": "en", "en_gb": "en", "english": "en"}


# fonts with Simplified Chinese glyphs, best first: figure labels in Chinese need one of them
CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "Source Han Sans CN", "PingFang SC", "Heiti SC",
             "Microsoft YaHei", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "Noto Sans SC",
             "Droid Sans Fallback", "Noto Sans CJK JP", "Arial Unicode MS")
# file-name fragments of those fonts, to find one installed after matplotlib built its font cache
_CJK_FONT_FILES = ("notosanscjk", "noto-cjk", "sourcehansans", "pingfang", "stheiti", "msyh", "wqy",
                   "simhei", "notosanssc", "droidsansfallback", "arialuni")


def normalize_language(code: str) -> str:
    """``"zh"``, ``"zh-CN"``, ``"zh_CN.UTF-8"`` -> ``"zh"``; ``"en-US"`` -> ``"en"``; anything else raises ValueError."""
    if not isinstance(code, str):
        raise TypeError(f"the language must be a code such as 'zh' or 'en', got {code!r} of type {type(code).__name__}.")
    key = code.strip().split(".")[0].lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        known = ", ".join(f"{c!r} ({name})" for c, name in LANGUAGES.items())
        raise ValueError(f"Unknown language {code!r}. The course speaks {known}; "
                         f"call set_language('zh') or set_language('en').")
    return key


def _language_from_environment() -> str:
    value = os.environ.get("COURSE_LANG", "").strip()
    if not value:
        return DEFAULT_LANGUAGE
    try:
        return normalize_language(value)
    except ValueError as error:  # a typo in the environment must not stop `import course_lib`
        warnings.warn(f"COURSE_LANG={value!r} ignored: {error}", stacklevel=2)
        return DEFAULT_LANGUAGE


_language = _language_from_environment()


def get_language() -> str:
    """The language course_lib speaks now: ``"en"`` or ``"zh"``."""
    return _language


def set_language(code: str) -> str:
    """Make course_lib speak ``code`` (``"zh"`` or ``"en"``) from now on; returns the normalized code.

    In Chinese it also puts a font with Chinese glyphs first in matplotlib's font list, and warns when
    the machine has none. First, not after the others as a fallback: in a label that mixes words and
    $math$ (``"数据：$x_0 \\sim p_0$"``) mathtext draws the words with the first font of the list alone.
    Calling it again re-reads the translation files (after editing one, re-run the cell).
    """
    global _language
    _language = normalize_language(code)
    catalogue.cache_clear()
    if _language == "zh":
        _use_cjk_font()
    return _language


def translatable(message: str) -> str:
    """Mark a message for translation where it is defined; :func:`tr` translates it where it is shown.

    Returns ``message`` unchanged. The translation tests collect the literal strings passed to
    ``tr(...)`` and ``translatable(...)`` in course_lib and in the lessons' code cells.
    """
    return message


def tr(message: str, /, **fields) -> str:
    """``message`` (English, a ``str.format`` template) in the current language, with ``fields`` filled in.

    Falls back to the English text when there is no entry, and to the English template when a
    translated template does not format (a field renamed in one language only).
    """
    text = message
    if _language != DEFAULT_LANGUAGE:
        text = catalogue(_language).get(message, message)
    if not fields:
        return text
    try:
        return text.format(**fields)
    except (KeyError, IndexError, ValueError):
        return message.format(**fields)


def template_fields(template: str) -> set[str]:
    """The ``{fields}`` of a ``str.format`` template: ``"t={t:4d}, {name}"`` -> ``{"t", "name"}``."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


@lru_cache(maxsize=None)
def catalogue(language: str) -> dict[str, str]:
    """English message -> translation, for ``language``: the library's file, then every lesson's strings.

    An English message translated twice keeps the first translation (the library's, then the
    translation files in sorted order); ``tests/test_translations.py`` refuses such conflicts.
    """
    language = normalize_language(language)
    merged: dict[str, str] = {}
    sources = [catalogues.library_catalogue_path(language)] + catalogues.translation_files(language)
    for path in sources:
        if not path.exists():
            continue
        try:
            strings = catalogues.read_strings(path, language)
        except catalogues.TranslationFileError as error:   # a lesson keeps running, in English where the file was broken
            warnings.warn(f"{error} Its messages are shown in English until it is fixed.", stacklevel=3)
            continue
        for english, translated in strings.items():
            if translated:
                merged.setdefault(english, translated)
    return merged


def _use_cjk_font() -> None:
    """Put an installed font with Chinese glyphs first in matplotlib's ``font.family`` (see set_language)."""
    try:
        import matplotlib
        from matplotlib import font_manager
    except ImportError:  # matplotlib is a dependency of the course; without it there are no figures to label
        return

    def installed() -> str | None:
        names = {font.name for font in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    font = installed()
    if font is None:  # installed after matplotlib cached its font list: add the files themselves
        for path in font_manager.findSystemFonts():
            if any(part in Path(path).name.lower().replace(" ", "") for part in _CJK_FONT_FILES):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        font = installed()
    if font is None:
        warnings.warn(tr("No font with Chinese characters was found, so figure labels in Chinese will show "
                         "empty boxes. Install one (Debian/Ubuntu: sudo apt-get install fonts-noto-cjk; macOS "
                         "and Windows have one) and restart the kernel."), stacklevel=3)
        return
    family = [name for name in matplotlib.rcParams["font.family"] if name != font]
    matplotlib.rcParams["font.family"] = [font] + family


if _language == "zh":   # COURSE_LANG=zh: the figures need the Chinese font from the start too
    _use_cjk_font()
