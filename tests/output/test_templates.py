"""The one Jinja2 environment: autoescape on for the report's and the timeline's templates."""

from __future__ import annotations

import jinja2
import pytest
from markupsafe import Markup

from convlens import BadArgument
from convlens.output import asset, environment, render
from convlens.report import templating

EVIL = "<script>alert('x')</script>"


def test_every_value_is_escaped() -> None:
    env = environment()
    assert env.autoescape is True or env.autoescape(None) is True  # type: ignore[operator]
    out = env.from_string("<p title=\"{{ v }}\">{{ v }}</p>").render(v=EVIL)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&#39;x&#39;" in out
    assert env.from_string("{{ v }}").render(v=Markup("<b>ok</b>")) == "<b>ok</b>"  # trusted HTML stays


def test_the_report_and_the_timeline_share_it() -> None:
    assert templating.environment() is environment()
    img = render("report/img.html", cls="", alt=EVIL, src="data:image/png;base64,AA==")
    assert isinstance(img, Markup) and "<script>" not in img and "&lt;script&gt;" in img
    assert templating.render("img.html", cls="", alt=EVIL, src="data:,") == render(
        "report/img.html", cls="", alt=EVIL, src="data:,")
    macro = environment().get_template("timeline/picture.html").module.picture  # type: ignore[attr-defined]
    html = str(macro({"cls": "c", "alt": EVIL, "caption": EVIL, "src": "data:,"}))
    assert "<script>" not in html and html.count("&lt;script&gt;") == 3  # alt, title, caption


def test_a_misspelt_value_fails_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("{{ nope }}").render()


def test_only_the_template_folders_can_be_read() -> None:
    for name in ("nope/x.html", "report/../../__init__.py", "report/", "../report/img.html", "report/missing.html"):
        with pytest.raises(BadArgument, match="missing from the convlens installation"):
            render(name)
    with pytest.raises(BadArgument):
        asset("timeline/../../_version.py")
    assert asset("report/report.css") == templating.asset("report.css") and "{" in asset("report/report.css")
