"""The Ray engine on GPUs, proved on a CPU machine with a declared fake GPU (``ray.init(num_gpus=1)``).

Ray hands GPUs to the actors that request them (``num_gpus``, fractions allowed) and makes those
the only ones they see (``CUDA_VISIBLE_DEVICES``, ``ray.get_gpu_ids()``): the actors report both,
and the result still equals the local engine's. The rules that need no cluster (``gpu_plan``) are
tested on their own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens import BadArgument
from convlens.adapters import open_model
from convlens.dataset.accumulate import RANKINGS
from convlens.dataset.engine import BatchRunner, run_local
from convlens.dataset.ray_engine import gpu_plan, run_ray
from convlens.dataset.sources import open_source

IMAGES, BATCH, K = 48, 8, 3


def test_gpu_plan():
    assert gpu_plan("cuda", 2, None, None) == (1.0, "cuda")
    assert gpu_plan("cuda:1", 2, 0.5, 4) == (0.5, "cuda")  # an actor sees only its own GPU: cuda
    assert gpu_plan("auto", 1, 0.25, None) == (0.25, "auto")
    assert gpu_plan(None, 0, None, None) == (0.0, "auto")
    assert gpu_plan("cpu", 4, None, None) == (0.0, "cpu")
    with pytest.raises(BadArgument, match="the Ray cluster has no GPUs"):
        gpu_plan("cuda", 0, None, None)
    with pytest.raises(BadArgument, match="--gpus-per-worker asks for GPUs, but --device cpu"):
        gpu_plan("cpu", 2, 0.5, None)
    with pytest.raises(BadArgument, match="needs 3 GPUs and the Ray cluster has 2"):
        gpu_plan("cuda", 2, 1.0, 3)
    with pytest.raises(BadArgument, match="fraction of one GPU"):
        gpu_plan("cuda", 2, 1.5, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("gpu-data")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / str(i % 3)
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)).save(folder / f"{i:03d}.png")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU()).eval()
    model = root.parent / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 24, 24),)), model)
    return root, model


def test_actors_request_and_see_their_gpu_share(data):
    import ray

    root, model = data
    adapter = open_model(model)
    layers = [info for info in adapter.layers() if info.kind == "conv"]
    source = open_source(root)
    classes = len(source.class_names or ())
    local = run_local(BatchRunner(adapter, layers, source, size=None, preprocess="unit", k=K, classes=classes),
                      batch_size=BATCH)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        placement: dict = {}
        spec = {"model": str(model), "weights": None, "input_shape": None, "trust": False, "preprocess": "unit",
                "device": "auto"}
        got = run_ray(spec, source, layers, k=K, classes=classes, size=None, preprocess="unit", batch_size=BATCH,
                      gpus_per_worker=0.5, placement=placement)
    finally:
        ray.shutdown()
    assert placement["num_gpus"] == 0.5
    # two actors share the one (declared) GPU; each was given it and sees it as its only GPU, and its
    # model opened with device auto found no real CUDA there, so it ran on the CPU
    assert placement["actors"] == ["cpu (Ray GPU ids 0)"]
    assert "2 model actors with 0.5 GPU each" in placement["note"]
    assert got.images == local.images == IMAGES
    for info in layers:
        stats_a, rank_a, _ = local.layer_parts(info.name)
        stats_b, rank_b, _ = got.layer_parts(info.name)
        for key in RANKINGS:
            (sa, ia, pa), (sb, ib, pb) = rank_a[key].result(), rank_b[key].result()
            assert np.array_equal(ia, ib) and np.array_equal(pa, pb) and np.array_equal(sa, sb)
        ra, rb = stats_a.result(), stats_b.result()
        np.testing.assert_allclose(ra.mean, rb.mean, rtol=1e-12)
        np.testing.assert_allclose(ra.std, rb.std, rtol=1e-9)
