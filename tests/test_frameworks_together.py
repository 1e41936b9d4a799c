"""Several frameworks in one process, in the order a notebook user might load them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_keras_then_torch_export_in_one_process():
    # triton (pulled in by torch.export) segfaulted when loaded after TensorFlow; convlens loads it
    # first whenever it imports Keras. A fresh process, because this test's own process has both.
    script = textwrap.dedent("""
        import numpy as np, torch
        from convlens import Lens, DEMO_IMAGE
        keras_maps = Lens("demo").feature_maps(DEMO_IMAGE, layers="conv")
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
        program = torch.export.export(net, (torch.zeros(1, 1, 28, 28),))
        torch_maps = Lens(program).feature_maps(DEMO_IMAGE, layers="conv")
        print(len(keras_maps), *next(iter(torch_maps.values())).shape)
    """)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-5:] == ["3", "1", "26", "26", "4"]
