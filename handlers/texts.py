"""Message texts, one catalogue per language in ``handlers/data/texts/<locale>.yaml``.

``t("survey.header", "vi", case_code=...)`` looks a text up by its dotted key and fills in its
``{placeholders}``; a locale without a catalogue falls back to Vietnamese.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType

import yaml

from handlers.questionnaire import LOCALES

__all__ = [
    "DEFAULT_LOCALE",
    "MissingTextParameter",
    "TextCatalogueError",
    "catalogue",
    "placeholders",
    "rating_labels",
    "t",
]

DEFAULT_LOCALE = LOCALES[0]
"""The language used when a text is asked for in a locale that has no catalogue."""

_DATA_PACKAGE = "handlers"
_DATA_DIR = ("data", "texts")
_FORMATTER = string.Formatter()


class TextCatalogueError(ValueError):
    """A text catalogue file is malformed; the message names the file and the key."""


class MissingTextParameter(ValueError):
    """A text was formatted without a value for one of its placeholders."""

    def __init__(self, key: str, locale: str, missing: list[str], given: list[str]) -> None:
        self.key = key
        self.locale = locale
        self.missing = missing
        super().__init__(
            f"text {key!r} ({locale}) needs parameter(s) {', '.join(missing)}; "
            f"given: {', '.join(given) or 'none'}"
        )


def _resolve_locale(locale: str) -> str:
    return locale if locale in LOCALES else DEFAULT_LOCALE


@cache
def catalogue(locale: str) -> Mapping[str, str]:
    """All texts of ``locale`` (or of the fallback language), by dotted key."""
    locale = _resolve_locale(locale)
    file_name = f"{locale}.yaml"
    source = (
        resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR, file_name).read_text(encoding="utf-8")
    )
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise TextCatalogueError(f"{file_name}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TextCatalogueError(f"{file_name}: the top level must be a mapping of keys")
    texts: dict[str, str] = {}
    _flatten(raw, "", texts, file_name)
    for key, text in texts.items():
        _check_placeholders(text, f"{file_name}: {key!r}")
    return MappingProxyType(texts)


def _flatten(node: dict[object, object], prefix: str, out: dict[str, str], file_name: str) -> None:
    for raw_key, value in node.items():
        key = f"{prefix}{raw_key}"
        if isinstance(value, dict):
            _flatten(value, f"{key}.", out, file_name)
        elif isinstance(value, str) and value.strip():
            out[key] = value
        else:
            raise TextCatalogueError(f"{file_name}: {key!r} must be a non-empty text")


def _check_placeholders(text: str, where: str) -> None:
    try:
        fields = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise TextCatalogueError(f"{where}: bad braces ({exc}); write {{{{ for a brace") from exc
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TextCatalogueError(
                f"{where}: placeholder {{{name}}} must be a plain {{name}} without format"
            )


def placeholders(key: str, locale: str) -> frozenset[str]:
    """The names of the ``{placeholders}`` in a text."""
    return frozenset(
        name for _, name, _, _ in _FORMATTER.parse(_lookup(key, locale)) if name is not None
    )


def _lookup(key: str, locale: str) -> str:
    texts = catalogue(locale)
    if key in texts:
        return texts[key]
    fallback = catalogue(DEFAULT_LOCALE)
    if key in fallback:
        return fallback[key]
    raise KeyError(f"unknown text key {key!r}")


def t(key: str, locale: str, /, **params: object) -> str:
    """The text ``key`` in ``locale`` with its placeholders filled in from ``params``.

    Unknown keys raise ``KeyError``; a missing parameter raises ``MissingTextParameter``.
    Extra parameters are ignored, so callers can pass one set of values to several texts.
    """
    text = _lookup(key, locale)
    needed = placeholders(key, locale)
    missing = sorted(needed - params.keys())
    if missing:
        raise MissingTextParameter(key, _resolve_locale(locale), missing, sorted(params))
    return text.format_map(params)


def rating_labels(locale: str) -> list[str]:
    """The five choice labels of a rating question, worst first, each beginning with its digit."""
    return [t(f"rating.{score}", locale) for score in range(1, 6)]
