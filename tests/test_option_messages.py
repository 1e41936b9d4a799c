"""Errors about an option name that option, and an invalid regular expression says so and why."""

from __future__ import annotations

import re

import pytest

from convlens import BadArgument, LayerNotFound
from convlens.cli import main
from convlens.core.layers import LayerInfo
from convlens.selection import select_indexes


def _usage_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2  # main() returns argparse's status for a usage error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convlens: error: "), err
    return err


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_filters_names_itself(value, capsys, tmp_path):
    err = _usage_error(["filters", "demo", "--max-filters", value, "--out", str(tmp_path)], capsys)
    assert "argument --max-filters:" in err and "--max-channels" not in err, err
    assert f"'{value}': give at least 1 filter (or 'all')" in err


def test_max_channels_names_itself(capsys, tmp_path):
    err = _usage_error(["maps", "demo", "x.png", "--max-channels", "-3", "--out", str(tmp_path)], capsys)
    assert "argument --max-channels: '-3': give at least 1 channel (or 'all')" in err
    err = _usage_error(["maps", "demo", "x.png", "--max-channels", "many", "--out", str(tmp_path)], capsys)
    assert "argument --max-channels: 'many': give a number of channels or 'all'" in err


def _table() -> list[LayerInfo]:
    names = ["input", "conv1", "conv2", "pool", "conv12", "dense"]
    kinds = ["input", "conv", "conv", "pool", "conv", "dense"]
    return [LayerInfo(index=i, name=n, type=n, kind=k, output_shape=None) for i, (n, k) in
            enumerate(zip(names, kinds))]


@pytest.mark.parametrize("pattern", ["re:[", "re:(conv", "re:conv[1,2", "re:*conv"])
def test_an_invalid_regular_expression_says_so_and_why(pattern):
    with pytest.raises(BadArgument) as info:
        select_indexes(_table(), pattern)
    message = str(info.value)
    assert message.startswith(f"invalid regular expression {pattern[3:]!r}: "), message
    assert any(why in message for why in ("unterminated", "missing )", "nothing to repeat")), message
    assert "no layer matches" not in message


def test_commas_inside_a_regular_expression_belong_to_it():
    t = _table()
    assert select_indexes(t, r"re:^conv\d{1,2}$") == [1, 2, 4]  # was split into 're:^conv\d{1' and '2}$'
    assert select_indexes(t, r"re:^conv\d{2,},pool") == [3, 4]
    assert select_indexes(t, "re:^(conv1|dense)$, pool") == [1, 3, 5]
    assert select_indexes(t, "re:^[,c]onv2$,dense") == [2, 5]
    with pytest.raises(LayerNotFound, match=re.escape("no layer matches 're:^x{1,2}$'")):
        select_indexes(t, "re:^x{1,2}$")


def test_cli_reports_the_invalid_regular_expression(capsys, tmp_path):
    err_lines: list[str] = []

    class Err:
        def write(self, text: str) -> None:
            err_lines.append(text)

    code = main(["filters", "demo", "--layers", "re:[", "--out", str(tmp_path / "out")], stderr=Err())
    assert code == 2
    assert "".join(err_lines) == ("convlens: error: invalid regular expression '[': unterminated character set "
                                  "at position 0; write it in Python's re syntax, e.g. 're:conv[12]$'\n")
