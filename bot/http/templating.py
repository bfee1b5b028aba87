"""The Jinja2 set-up every server-rendered page shares (the web survey, the dashboard): one
folder of templates each, autoescaped, strict about missing values, and the filters the
catalogue texts need."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape


def paragraphs(text: str) -> Markup:
    """A catalogue text as HTML: blank lines part paragraphs, line breaks stay."""
    blocks = [block for block in text.split("\n\n") if block.strip()]
    return Markup("").join(
        Markup("<p>{}</p>\n").format(
            Markup("<br>\n").join(escape(line) for line in block.split("\n"))
        )
        for block in blocks
    )


def template_environment(folder: str) -> Environment:
    """The environment of bot/templates/<folder>, with the `paragraphs` filter."""
    environment = Environment(
        loader=PackageLoader("bot", f"templates/{folder}"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["paragraphs"] = paragraphs
    return environment
