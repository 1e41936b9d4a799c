"""``safe_name``: the one file-name rule, and the names it gives (the same as each copy it replaced)."""

from __future__ import annotations

import re

import pytest

from convlens.output import safe_name

# The rule every copy (lens, visualize, dataset, timeline recorder; heatmaps after "+" -> "p") applied.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@pytest.mark.parametrize(("name", "expected"), [
    ("conv1", "conv1"),
    ("block1/conv", "block1__conv"),
    ("features.0 (conv)", "features.0_conv"),
    ("model/features/0", "model__features__0"),
    ("../etc/passwd", "etc__passwd"),          # no way out of the folder, no hidden file
    (".hidden", "hidden"),
    ("__init__", "init"),
    ("résumé ünïcode", "r_sum_n_code"),
    ("a  b\tc\nd", "a_b_c_d"),
    ("<script>", "script"),
    ("", "layer"),
    ("...", "layer"),
    ("///", "layer"),
    ("é", "layer"),
])
def test_names(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_the_default_is_the_callers() -> None:
    assert safe_name("", "x") == "x" and safe_name("._", default="image") == "image"
    assert safe_name("ok", "x") == "ok"


@pytest.mark.parametrize("name", ["conv1", "block1/conv", "a b", "..", "", "x/../y", "gradcam++", "résumé",
                                  "layer:0", "a\\b", "c:\\dir\\f.png", " lead", "trail. ", "_x_"])
def test_the_same_names_as_the_copies_it_replaced(name: str) -> None:
    old = _UNSAFE.sub("_", name.replace("/", "__")).strip("._") or "layer"
    assert safe_name(name) == old
    old_heatmaps = _UNSAFE.sub("_", name.replace("+", "p").replace("/", "__")).strip("._") or "x"
    assert safe_name(name.replace("+", "p"), "x") == old_heatmaps


def test_results_are_plain_file_names() -> None:
    for name in ["a/b/c", "../../x", "\x00evil", "con", "a" * 300]:
        out = safe_name(name)
        assert out and "/" not in out and "\\" not in out and not out.startswith(".")
        assert re.fullmatch(r"[A-Za-z0-9._-]+", out)
