"""The one Jinja2 environment of convlens's HTML pages (the report and the timeline page).

Templates are package data: ``report/templates/<name>`` is
``"report/<name>"`` and ``timeline/templates/<name>`` is
``"timeline/<name>"``. Autoescaping is on for every template: every value a
template prints is HTML-escaped unless it is ``Markup`` (HTML that a
template or a trusted helper made). A misspelt name fails loudly
(``StrictUndefined``) instead of printing nothing.

Pages' CSS and JavaScript are not templates: :func:`asset` returns them
verbatim, so the hashes in a page's Content-Security-Policy are the hashes
of exactly the text on the page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from .._errors import BadArgument

__all__ = ["FOLDERS", "Markup", "asset", "environment", "render"]

#: The template folders, by the prefix that names them: ``"<prefix>/<file>"`` is
#: ``convlens/<package>/templates/<file>``.
FOLDERS = {"report": "report", "timeline": "timeline", "compare": "compare", "evaluate": "evaluate"}


def _text(name: str) -> str | None:
    """The text of the template ``name`` (``"<prefix>/<path>"``), or ``None`` when there is none."""
    prefix, _, rest = name.partition("/")
    parts = rest.split("/")
    if prefix not in FOLDERS or not rest or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        return resources.files("convlens").joinpath(FOLDERS[prefix], "templates", *parts).read_text("utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _source(name: str) -> tuple[str, str, Any] | None:
    text = _text(name)
    return None if text is None else (text, name, lambda: True)  # package data: never reloaded


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of every page (autoescaping on for every template)."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly, never prints ""
        keep_trailing_newline=True,
        auto_reload=False,
    )


def render(name: str, **values: Any) -> Markup:
    """Render the template ``name`` (e.g. ``"report/page.html"``) with ``values``; safe HTML (``Markup``).

    Raises:
        BadArgument: there is no such template (a broken installation).
    """
    try:
        template = environment().get_template(name)
    except jinja2.TemplateNotFound as e:  # pragma: no cover - a broken installation
        raise BadArgument(f"the template {name} is missing from the convlens installation "
                          "(reinstall convlens)") from e
    return Markup(template.render(**values))


@cache
def asset(name: str) -> str:
    """The text of ``name`` (e.g. ``"report/report.css"``) verbatim: a page's CSS or JavaScript.

    Raises:
        BadArgument: there is no such file (a broken installation).
    """
    text = _text(name)
    if text is None:  # pragma: no cover - a broken installation
        raise BadArgument(f"the file {name} is missing from the convlens installation (reinstall convlens)")
    return text
