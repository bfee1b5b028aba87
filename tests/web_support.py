"""Helpers for the web survey page's tests: read a page as a person would (its text, its
buttons, its form fields) and press a button by its label, over any aiohttp client."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.buttons: list[tuple[str, str]] = []  # (label, value)
        self.forms = 0
        self.lang: str | None = None
        self.textarea: str | None = None
        self.chunks: list[str] = []
        self._button: dict[str, str] | None = None
        self._label: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "html":
            self.lang = values.get("lang")
        elif tag in {"style", "title"}:
            self._skip += 1
        elif tag == "form":
            self.forms += 1
        elif tag == "input" and values.get("type") == "hidden":
            self.hidden[values["name"]] = values.get("value", "")
        elif tag == "button":
            self._button, self._label = values, []
        elif tag == "textarea":
            self.textarea = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in {"style", "title"}:
            self._skip -= 1
        elif tag == "button" and self._button is not None:
            self.buttons.append((" ".join("".join(self._label).split()), self._button["value"]))
            self._button = None
        self.chunks.append("\n" if tag in {"p", "h1", "dd", "button", "br", "div"} else "")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._button is not None:
            self._label.append(data)
        self.chunks.append(data)


@dataclass
class Page:
    status: int
    html: str
    url: str
    lang: str | None
    text: str
    hidden: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)
    has_form: bool = False

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.buttons]

    def value_of(self, label_prefix: str) -> str:
        found = [value for label, value in self.buttons if label.startswith(label_prefix)]
        assert len(found) == 1, (label_prefix, self.labels)
        return found[0]

    def form(self, label_prefix: str, text: str | None = None, **changes: str) -> dict[str, str]:
        """The fields the browser sends when the button is pressed."""
        data = {**self.hidden, "choice": self.value_of(label_prefix)}
        if text is not None:
            data["text"] = text
        data.update(changes)
        return data


async def read_page(response: ClientResponse) -> Page:
    html = await response.text()
    assert response.content_type == "text/html", response.content_type
    assert response.charset == "utf-8"
    parser = _PageParser()
    parser.feed(html)
    text = "\n".join(" ".join(line.split()) for line in "".join(parser.chunks).splitlines())
    return Page(
        status=response.status,
        html=html,
        url=str(response.url),
        lang=parser.lang,
        text="\n".join(line for line in text.splitlines() if line),
        hidden=parser.hidden,
        buttons=parser.buttons,
        has_form=parser.forms > 0,
    )


class WebCitizen:
    """A person with the case's web link, using a browser without JavaScript."""

    def __init__(self, client: TestClient[Any, Any], link: str) -> None:
        self.client = client
        self.path = "/s/" + link.rsplit("/s/", 1)[1]

    async def open(self, lang: str | None = None) -> Page:
        params = {"lang": lang} if lang else None
        return await read_page(await self.client.get(self.path, params=params))

    async def send(self, data: dict[str, str]) -> Page:
        """Posts a form and follows the redirect, as a browser does."""
        return await read_page(await self.client.post(self.path, data=data))

    async def press(self, page: Page, label_prefix: str, text: str | None = None) -> Page:
        assert page.status == 200, page.text
        return await self.send(page.form(label_prefix, text))
