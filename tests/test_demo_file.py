"""The shipped demo model opens on every Keras the extras allow (keras>=3.5, see make test-oldest).

Keras 3.15 writes config keys that older Keras 3 releases refuse (``input_axes`` and
``output_axes`` of an initializer, ``quantization_config`` of a Dense layer), all at their
defaults; the file ships without them, which every Keras 3 reads as the same model.
"""

from __future__ import annotations

import json
import zipfile

from convlens import DEMO_MODEL

NEWER_KEYS = ("input_axes", "output_axes", "quantization_config")


def test_the_demo_config_has_no_keys_older_keras_refuses():
    config = json.loads(zipfile.ZipFile(DEMO_MODEL).read("config.json"))
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            found.extend(k for k in node if k in NEWER_KEYS)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    assert found == []
    assert [layer["class_name"] for layer in config["config"]["layers"]][:2] == ["InputLayer", "Conv2D"]
