"""The optimisation loop on a numpy network with hand-written gradients (see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.visualize.objectives import Diversity, Objective
from convlens.visualize.optimize import Adam, pixel_ascent, plan_batches, render
from convlens.visualize.param import PresetMap


def test_adam_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) * s for s in (1.0, 1e-3, 10.0, 0.5)]
    p = start.copy()
    adam = Adam(p.shape, lr=0.05)
    t = torch.tensor(start, requires_grad=True)
    opt = torch.optim.Adam([t], lr=0.05)
    for g in grads:
        adam.step(p, g)
        t.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def _channels(n=4, layer=1, negative=False):
    return [Objective("channel", layer, c, negative) for c in range(n)]


def test_objectives_rise(numpy_net):
    r = render(numpy_net, _channels(), preset=PresetMap("unit", 3), size=24, steps=40, batch=4)
    assert r.images.shape == (4, 24, 24, 3) and r.images.dtype == np.float32
    assert r.images.min() > 0 and r.images.max() < 1
    first, last = r.history[:5].mean(axis=0), r.history[-5:].mean(axis=0)
    assert np.all(last > first)
    assert numpy_net.calls == 40 + 1  # one gradient call per step for the whole batch, one to score


def test_negative_objectives_fall(numpy_net):
    pos = render(numpy_net, _channels(), preset=PresetMap("unit", 3), size=24, steps=30)
    neg = render(numpy_net, _channels(negative=True), preset=PresetMap("unit", 3), size=24, steps=30)
    assert np.all(neg.scores > neg.history[0])  # the score of a negative objective is minus the activation
    assert np.all(-neg.scores < pos.scores)


def test_same_seed_same_images_any_batching(numpy_net):
    kwargs = {"preset": PresetMap("unit", 3), "size": 20, "steps": 6, "seed": 4}
    whole = render(numpy_net, _channels(), batch=4, **kwargs)
    ones = render(numpy_net, _channels(), batch=1, **kwargs)
    np.testing.assert_array_equal(whole.images, ones.images)
    # an image does not depend on the others in the list either
    alone = render(numpy_net, _channels()[2:3], batch=4, **kwargs)
    np.testing.assert_array_equal(alone.images[0], whole.images[2])
    other = render(numpy_net, _channels(), batch=4, **{**kwargs, "seed": 5})
    assert np.abs(other.images - whole.images).max() > 1e-3


def test_class_objective_and_fixed_input_size(make_numpy_net):
    net = make_numpy_net(size=16)
    objs = [Objective("class", None, k) for k in range(3)]
    r = render(net, objs, preset=PresetMap("tf", 3), size=24, steps=30, input_size=(16, 16))
    assert r.images.shape == (3, 24, 24, 3)
    assert np.all(r.history[-1] > r.history[0])


def test_diversity_pushes_copies_apart(make_numpy_net):
    numpy_net = make_numpy_net(features=8)
    objs = [Objective("channel", 1, 2)] * 3
    kwargs = {"preset": PresetMap("unit", 3), "size": 16, "steps": 40, "transforms": []}
    plain = render(numpy_net, objs, **kwargs)
    diverse = render(numpy_net, objs, diversity=1.0, **kwargs)

    def similarity(images):  # the penalty itself: Gram-matrix cosines between the copies
        acts = []
        numpy_net.run(PresetMap("unit", 3).forward(images), [1], lambda i, a: acts.append(a))
        return Diversity(1.0).value_and_grad(acts[0], [0, 0, 0])[0]

    assert similarity(plain.images) > 1.99  # copies of one objective converge to one image
    assert similarity(diverse.images) < 1.8


def test_pixel_ascent_is_the_naive_baseline(numpy_net):
    r = pixel_ascent(numpy_net, _channels(), preset=PresetMap("unit", 3), size=16, steps=20)
    assert r.images.min() >= 0 and r.images.max() <= 1
    assert np.all(r.history[-1] > r.history[0])


def test_progress_counts_steps_of_every_batch(numpy_net):
    class Count:
        def start(self, total, label):
            self.total, self.label, self.done = total, label, 0

        def advance(self, n=1):
            self.done += n

        def finish(self):
            self.finished = True

    p = Count()
    render(numpy_net, _channels(), preset=PresetMap("unit", 3), size=16, steps=5, batch=3, progress=p)
    assert (p.total, p.done, p.finished) == (10, 10, True)
    assert "4 images" in p.label


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_groups_stay_together_with_diversity(numpy_net, batch):
    groups = [0, 0, 1, 1, 1, 2]
    out = plan_batches(groups, batch, keep_groups=True)
    assert sorted(i for b in out for i in b) == list(range(6))
    for b in out:
        labels = {groups[i] for i in b}
        assert all(sum(1 for i in b if groups[i] == g) == groups.count(g) for g in labels)
