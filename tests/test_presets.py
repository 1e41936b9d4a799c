"""The preset table is the one list of presets: the CLI and the messages read their names from it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from convlens import images
from convlens._errors import BadArgument
from convlens.cli import build_parser
from convlens.images import PRESET_NAMES, PRESET_TABLE, PRESETS, apply_preset, check_preset


def _preprocess_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for option in sub._actions:
                    if option.dest == "preprocess":
                        yield command, option


def test_cli_preprocess_choices_are_the_tables_names():
    found = dict(_preprocess_actions(build_parser()))
    assert len(found) >= 3  # maps/stats/report/heatmap (image options), visualize, dataset
    for command, option in found.items():
        assert tuple(option.choices) == PRESET_NAMES, command
    assert PRESET_NAMES == tuple(p.name for p in PRESET_TABLE) == tuple(PRESETS)


def test_presets_dict_is_read_from_the_table():
    assert PRESETS == {p.name: p.description for p in PRESET_TABLE}
    assert PRESET_NAMES == ("unit", "caffe", "torch", "tf", "raw")
    assert images.presets.PRESETS is PRESETS


def test_unknown_preset_lists_every_preset_of_the_table():
    with pytest.raises(BadArgument) as e:
        check_preset("imagenet")
    message = str(e.value)
    assert message.startswith("unknown preprocessing preset 'imagenet'; choose one of: unit: x / 255")
    for p in PRESET_TABLE:
        assert f"{p.name}: {p.description}" in message


def test_channel_message_names_the_presets_that_take_any_channels():
    with pytest.raises(BadArgument) as e:
        apply_preset(np.zeros((2, 2, 4), np.float32), "caffe")
    assert str(e.value) == (
        "the 'caffe' preset needs 1 or 3 channels (channels last), not 4; "
        "use 'unit', 'tf' or 'raw', or convert the image to RGB"
    )


def test_each_presets_function_is_what_apply_preset_runs():
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3) * 20
    for p in PRESET_TABLE:
        want = p.function(x.reshape(-1, 3).astype(np.float64)).astype(np.float32).reshape(x.shape)
        np.testing.assert_array_equal(apply_preset(x, p.name), want)
