"""The gradient entry point (``Adapter.gradients``) on tiny hand-set networks, in every framework.

The exact tests use a network whose gradients are known in closed form: a
1x1 convolution, a global average pool and a dense layer, with no
nonlinearity. With ``H x W`` positions, the score of class ``k`` is
``sum_c w_dense[c, k] * mean_hw(conv[..., c]) + b_k``, so
``d score / d conv[h, w, c] = w_dense[c, k] / (H * W)`` and
``d score / d x[h, w, i] = sum_c w_conv[i, c] * w_dense[c, k] / (H * W)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens import BadArgument, LayerNotFound, UnsupportedModel
from convlens.adapters.base import Target
from convlens.adapters.torch import TorchAdapter

H, W, C_IN, C_MID, K = 5, 4, 2, 3, 4
#: (C_IN, C_MID) and (C_MID, K), in the Keras layout; torch gets the transposes.
W_CONV = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]], np.float32)
W_DENSE = np.array([[1.0, 0.0, -1.0, 2.0], [0.5, -0.5, 1.0, 0.0], [-2.0, 1.0, 0.0, 3.0]], np.float32)
B_DENSE = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def _batch(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, H, W, C_IN)).astype(np.float32)


def _expected(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(conv output, d score / d conv, d score / d input, score) by hand."""
    conv = x @ W_CONV
    score = conv.mean(axis=(1, 2)) @ W_DENSE[:, k] + B_DENSE[k]
    d_conv = np.broadcast_to(W_DENSE[:, k] / (H * W), conv.shape)
    d_in = np.broadcast_to(W_CONV @ W_DENSE[:, k] / (H * W), x.shape)
    return conv, d_conv, d_in, score


def _torch_tiny(final: nn.Module | None = None) -> nn.Sequential:
    conv = nn.Conv2d(C_IN, C_MID, 1, bias=False)
    fc = nn.Linear(C_MID, K)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(W_CONV.T.copy()).view(C_MID, C_IN, 1, 1))
        fc.weight.copy_(torch.from_numpy(W_DENSE.T.copy()))
        fc.bias.copy_(torch.from_numpy(B_DENSE))
    layers = [conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc]
    return nn.Sequential(*layers, *([final] if final is not None else []))


# --------------------------------------------------------------------------- PyTorch


def test_torch_exact_gradients_of_a_class_score():
    adapter = TorchAdapter(_torch_tiny(), input_shape=(H, W, C_IN))
    x = _batch()
    for k in range(K):
        g = adapter.gradients(x, Target(channels=(k,)), layers=[1], wrt_input=True)
        conv, d_conv, d_in, score = _expected(x, k)
        np.testing.assert_allclose(g.activations[1], conv, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(g.grads[1], d_conv, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.input_grad, d_in, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.score, score, rtol=1e-5)
        assert g.score.dtype == np.float64 and g.score.shape == (2,)
        assert g.output.shape == (2, K) and not g.logits
        np.testing.assert_allclose(g.output[:, k], score, rtol=1e-5)
    # one class per item, weights per item
    g = adapter.gradients(x, Target(channels=(1, 3), weights=(1.0, -2.0)), layers=[1])
    np.testing.assert_allclose(g.grads[1][0], _expected(x, 1)[1][0], rtol=1e-6)
    np.testing.assert_allclose(g.grads[1][1], -2 * _expected(x, 3)[1][1], rtol=1e-6)


def test_torch_a_final_softmax_is_differentiated_before_it():
    x = _batch()
    for final, activation, logits in ((nn.Softmax(dim=1), "softmax", True), (nn.LogSoftmax(dim=1), None, True),
                                      (nn.Sigmoid(), "sigmoid", False), (None, "linear", False)):
        adapter = TorchAdapter(_torch_tiny(final), input_shape=(H, W, C_IN))
        assert adapter.final_activation == activation
        g = adapter.gradients(x, Target(channels=(2,)), layers=[1])
        assert g.logits is logits, final
        if logits:
            _, d_conv, _, score = _expected(x, 2)
            np.testing.assert_allclose(g.score, score, rtol=1e-5)  # the logit, not its probability
            np.testing.assert_allclose(g.grads[1], d_conv, rtol=1e-6, atol=1e-7)
            if activation == "softmax":
                np.testing.assert_allclose(g.output.sum(axis=1), 1.0, rtol=1e-6)  # the output stays the model's


def test_torch_layer_target_channel_mean_and_centre():
    adapter = TorchAdapter(_torch_tiny(), input_shape=(H, W, C_IN))
    x = _batch()
    g = adapter.gradients(x, Target(layer=1, channels=(2,), reduce="mean"), layers=[1], wrt_input=True)
    conv = x @ W_CONV
    np.testing.assert_allclose(g.score, conv[..., 2].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    want = np.zeros_like(conv)
    want[..., 2] = 1 / (H * W)
    np.testing.assert_allclose(g.grads[1], want, rtol=1e-6)
    np.testing.assert_allclose(g.input_grad, np.broadcast_to(W_CONV[:, 2] / (H * W), x.shape), rtol=1e-6)
    g = adapter.gradients(x, Target(layer=1, channels=(0,), reduce="center"), layers=[1])
    np.testing.assert_allclose(g.score, conv[:, H // 2, W // 2, 0], rtol=1e-5)
    assert g.grads[1].sum() == 2.0 and (g.grads[1][:, H // 2, W // 2, 0] == 1.0).all()
    # a layer before the target's has a gradient; one after it has none
    g = adapter.gradients(x, Target(layer=1, channels=(0,)), layers=[1, 4])
    assert not g.grads[4].any() and g.grads[4].shape == (2, K)


def _param_state(model: nn.Module) -> list[tuple[str, bool, object]]:
    return [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()]


def test_torch_no_parameter_gradient_and_every_flag_restored():
    model = _torch_tiny()
    model.train()
    model[1].eval()
    model[0].weight.requires_grad_(False)  # a mixed state comes back exactly
    adapter = TorchAdapter(model, input_shape=(H, W, C_IN))
    training = {n: m.training for n, m in model.named_modules()}
    before = _param_state(model)
    assert [f for _, f, _ in before] == [False, True, True]
    for kw in ({"layers": [1]}, {"wrt_input": True}, {"layers": [2, 3], "wrt_input": True}):
        adapter.gradients(_batch(), Target(channels=(1,)), **kw)
        assert _param_state(model) == before  # no .grad appeared, requires_grad as it was
        assert {n: m.training for n, m in model.named_modules()} == training


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 3)
        self.explode = False

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.explode:
            raise RuntimeError("boom")
        return self.head(x.mean(dim=(2, 3)))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_torch_hooks_flags_and_modes_restored_when_the_pass_raises():
    model = Exploding()
    model.train()
    model.bn.eval()
    model.head.bias.requires_grad_(False)
    adapter = TorchAdapter(model, input_shape=(8, 8, 3))
    training = {n: m.training for n, m in model.named_modules()}
    flags = _param_state(model)
    stats = model.bn.running_mean.clone()
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    g = adapter.gradients(x, Target(channels=(0,)), layers=[1, 2], wrt_input=True)
    assert g.grads[1].shape == (2, 6, 6, 2) and g.grads[1].any()
    torch.testing.assert_close(model.bn.running_mean, stats)  # ran in eval mode
    model.explode = True
    with pytest.raises(UnsupportedModel, match="boom"):
        adapter.gradients(x, Target(channels=(0,)), layers=[1, 2], wrt_input=True)
    assert _hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == training
    assert _param_state(model) == flags
    assert torch.is_grad_enabled()


class Tripwire(nn.Module):
    def forward(self, x):
        raise AssertionError("the pass went past the last needed layer")


def test_torch_need_output_false_stops_after_the_last_needed_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), Tripwire())
    adapter = TorchAdapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Identity()),
                           input_shape=(6, 6, 3))
    adapter.layers()
    adapter.module[2] = model[2]  # the table was built without the tripwire; now it guards the end
    adapter._records[2].module = model[2]
    x = np.random.default_rng(2).normal(size=(1, 6, 6, 3)).astype(np.float32)
    g = adapter.gradients(x, Target(layer=2, channels=(1,), reduce="mean"), layers=[1], need_output=False,
                          wrt_input=True)
    assert g.output is None
    conv = g.activations[1]
    np.testing.assert_allclose(g.score, np.maximum(conv[..., 1], 0).mean(axis=(1, 2)), rtol=1e-5)
    want = np.zeros_like(conv)
    want[..., 1] = (conv[..., 1] > 0) / 16
    np.testing.assert_allclose(g.grads[1], want, rtol=1e-6)  # through the in-place ReLU
    assert (conv < 0).any()  # the in-place ReLU did not overwrite the captured conv output
    with pytest.raises(UnsupportedModel, match="past the last needed layer"):
        adapter.gradients(x, Target(layer=2, channels=(1,)), layers=[1])  # need_output=True runs on
    assert _hooks(adapter.module) == 0


class Doubler(nn.Module):
    """The same 1x1 conv (times 2) applied twice: rows ``conv`` and ``conv#2``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
        self.act = nn.Identity()

    def forward(self, x):
        return self.act(self.conv(self.conv(x)))


def test_torch_a_module_called_twice_has_a_gradient_per_call():
    adapter = TorchAdapter(Doubler(), input_shape=(2, 2, 1))
    assert [t.name for t in adapter.layers()] == ["input", "conv", "conv#2", "act"]
    x = np.full((1, 2, 2, 1), 3.0, np.float32)
    g = adapter.gradients(x, Target(layer=3, channels=(0,)), layers=[1, 2], wrt_input=True)
    assert float(g.score[0]) == 4 * 12.0
    np.testing.assert_array_equal(g.activations[1], 6.0)
    np.testing.assert_array_equal(g.activations[2], 12.0)
    np.testing.assert_array_equal(g.grads[2], 1.0)
    np.testing.assert_array_equal(g.grads[1], 2.0)
    np.testing.assert_array_equal(g.input_grad, 4.0)
    g = adapter.gradients(x, Target(layer=2, channels=(0,)), layers=[2])  # the second call alone
    np.testing.assert_array_equal(g.grads[2], 1.0)


class Splitter(nn.Module):
    def forward(self, x):
        return x + 1, (x * 2, x.argmax(dim=1))


class Heads(nn.Module):
    def forward(self, x):
        return {"low": x - 1, "high": 3 * x}


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.split = Splitter()
        self.heads = Heads()

    def forward(self, x):
        a, (b, _) = self.split(x)
        return self.heads(a * b)


def test_torch_tuple_and_dict_rows():
    adapter = TorchAdapter(TupleNet(), input_shape=(2, 2, 2))
    assert [t.name for t in adapter.layers()] == ["input", "split:0", "split:1.0", "heads:low", "heads:high"]
    x = np.random.default_rng(4).normal(size=(1, 2, 2, 2)).astype(np.float32)
    # score: sum of channel 1 of high = 3 * (x + 1) * 2x over positions
    g = adapter.gradients(x, Target(layer=4, channels=(1,)), layers=[1, 2, 3], wrt_input=True)
    np.testing.assert_allclose(g.score, (3 * (x + 1) * 2 * x)[..., 1].sum(), rtol=1e-5)
    np.testing.assert_allclose(g.activations[1], x + 1, rtol=1e-6)
    np.testing.assert_allclose(g.activations[2], 2 * x, rtol=1e-6)
    mask = np.zeros_like(x)
    mask[..., 1] = 1
    np.testing.assert_allclose(g.grads[1], 3 * 2 * x * mask, rtol=1e-5)
    np.testing.assert_allclose(g.grads[2], 3 * (x + 1) * mask, rtol=1e-5)
    np.testing.assert_array_equal(g.grads[3], 0.0)  # a sibling output: no path to the score
    np.testing.assert_allclose(g.input_grad, 3 * (4 * x + 2) * mask, rtol=1e-5)
    np.testing.assert_allclose(g.output, (x + 1) * 2 * x - 1, rtol=1e-5)  # the first float tensor


class ChannelsLast(nn.Module):
    """A conv, then a Linear over the channels of an (N, H, W, C) tensor (ConvNeXt's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(W_CONV.T.copy()).view(3, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.conv(x).permute(0, 2, 3, 1)).mean(dim=(1, 2))


def test_torch_channels_last_rows_take_their_own_layout():
    adapter = TorchAdapter(ChannelsLast(), input_shape=(H, W, 2))
    table = adapter.layers()
    assert [(t.name, t.output_shape) for t in table] == [("input", (H, W, 2)), ("conv", (H, W, 3)),
                                                        ("fc", (H, W, 2))]
    x = _batch()
    g = adapter.gradients(x, Target(layer=2, channels=(0,), reduce="center"), layers=[1, 2])
    conv = x @ W_CONV
    np.testing.assert_allclose(g.activations[2], conv @ np.array([[1.0, -1], [2, 0], [3, 1]]), rtol=1e-5,
                               atol=1e-6)
    want = np.zeros_like(conv)
    want[:, H // 2, W // 2] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(g.grads[1], want, rtol=1e-6)
    assert g.grads[2][:, H // 2, W // 2, 0].tolist() == [1.0, 1.0] and g.grads[2].sum() == 2.0


class Optional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.extra = nn.ReLU()
        self.use_extra = True

    def forward(self, x):
        x = self.conv(x)
        return self.extra(x) if self.use_extra else x


def test_torch_bad_targets_and_rows_say_what_to_do():
    adapter = TorchAdapter(_torch_tiny(), input_shape=(H, W, C_IN))
    x = _batch()
    with pytest.raises(BadArgument, match=r"^class 1200 is out of range: the model has 4 classes \(0-3\)$"):
        adapter.gradients(x, Target(channels=(1200,)))
    with pytest.raises(BadArgument, match=r"channel 7 is out of range: layer 0 has 3 channels \(0-2\)"):
        adapter.gradients(x, Target(layer=1, channels=(7,)))
    with pytest.raises(LayerNotFound, match="row 9 does not exist"):
        adapter.gradients(x, Target(), layers=[9])
    model = Optional()
    adapter = TorchAdapter(model, input_shape=(2, 2, 2))
    assert [t.name for t in adapter.layers()] == ["input", "conv", "extra"]
    model.use_extra = False
    with pytest.raises(UnsupportedModel, match=r"layer extra \(row 2\) gave no output"):
        adapter.gradients(np.ones((1, 2, 2, 2), np.float32), Target(), layers=[2])
    assert _hooks(model) == 0


# --------------------------------------------------------------------------- Keras (each backend)


def _keras_tiny(keras, final: str = "linear", kind: str = "sequential"):
    """The closed-form network in Keras: Sequential, functional with a nested model, or subclassed."""
    L = keras.layers
    conv = L.Conv2D(C_MID, 1, use_bias=False, name="conv")
    gap = L.GlobalAveragePooling2D(name="gap")
    dense = L.Dense(K, activation=final if final != "layer" else "linear", name="dense")
    tail = [L.Softmax(name="probs")] if final == "layer" else []
    if kind == "sequential":
        model = keras.Sequential([keras.Input((H, W, C_IN)), conv, gap, dense, *tail], name="tiny")
    elif kind == "nested":
        inner = keras.Sequential([conv, gap], name="inner")
        inp = keras.Input((H, W, C_IN))
        out = dense(inner(inp))
        for layer in tail:
            out = layer(out)
        model = keras.Model(inp, out, name="tiny")
    else:
        class Tiny(keras.Model):
            def __init__(self) -> None:
                super().__init__(name="tiny")
                self.conv, self.gap, self.dense = conv, gap, dense

            def call(self, x):
                return self.dense(self.gap(self.conv(x)))

        model = Tiny()
        model(np.zeros((1, H, W, C_IN), np.float32))
    conv.set_weights([W_CONV.reshape(1, 1, C_IN, C_MID)])
    dense.set_weights([W_DENSE, B_DENSE])
    return model


@pytest.mark.keras
@pytest.mark.gradients
@pytest.mark.parametrize("kind", ["sequential", "nested", "subclassed"])
def test_keras_exact_gradients_of_a_class_score(keras, kind):
    from convlens.adapters.keras import KerasAdapter

    adapter = KerasAdapter(_keras_tiny(keras, kind=kind), input_shape=(H, W, C_IN))
    names = [t.name for t in adapter.layers()]
    conv_row = next(i for i, n in enumerate(names) if n.endswith("conv"))
    x = _batch()
    for k in (0, 3):
        g = adapter.gradients(x, Target(channels=(k,)), layers=[conv_row], wrt_input=True)
        conv, d_conv, d_in, score = _expected(x, k)
        np.testing.assert_allclose(g.activations[conv_row], conv, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.grads[conv_row], d_conv, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.input_grad, d_in, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.score, score, rtol=1e-5)
        np.testing.assert_allclose(g.output[:, k], score, rtol=1e-5)
        assert g.score.dtype == np.float64 and not g.logits
    g = adapter.gradients(x, Target(layer=conv_row, channels=(2,), reduce="mean"), layers=[conv_row])
    np.testing.assert_allclose(g.score, (x @ W_CONV)[..., 2].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # a subclassed model has no graph to read: what its call() does after the last layer is unknown
    assert adapter.final_activation == (None if kind == "subclassed" else "linear")


@pytest.mark.keras
@pytest.mark.gradients
@pytest.mark.parametrize("final", ["softmax", "layer", "sigmoid", "log_softmax"])
def test_keras_a_final_softmax_is_differentiated_before_it(keras, final):
    from convlens.adapters.keras import KerasAdapter

    model = _keras_tiny(keras, final=final, kind="nested" if final == "layer" else "sequential")
    adapter = KerasAdapter(model)
    # a log-softmax's log-probabilities are neither probabilities nor scores: the graph does not say
    assert adapter.final_activation == {"sigmoid": "sigmoid", "log_softmax": None}.get(final, "softmax")
    x = _batch()
    g = adapter.gradients(x, Target(channels=(2,)), layers=[1], wrt_input=True)
    _, d_conv, d_in, score = _expected(x, 2)
    if final == "sigmoid":  # not a softmax: the score is the model's own output
        assert not g.logits
        np.testing.assert_allclose(g.score, 1 / (1 + np.exp(-score)), rtol=1e-5)
        return
    assert g.logits
    np.testing.assert_allclose(g.score, score, rtol=1e-5)  # the logit
    np.testing.assert_allclose(g.grads[1], d_conv, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.input_grad, d_in, rtol=1e-5, atol=1e-7)
    probabilities = np.exp(g.output) if final == "log_softmax" else g.output
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # the output stays the model's
    dense = model.get_layer("dense")
    assert dense.activation is keras.activations.get(final if final != "layer" else "linear")


def _wrapped_calls(model) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=False) if "call" in vars(layer)]


@pytest.mark.keras
@pytest.mark.gradients
def test_keras_everything_restored_when_the_pass_raises(keras):
    from convlens.adapters.keras import KerasAdapter

    class Exploder(keras.layers.Layer):
        armed = False

        def call(self, x):
            if self.armed:
                raise RuntimeError("boom")
            return x

    L = keras.layers
    boom = Exploder(name="boom")
    model = keras.Sequential([keras.Input((H, W, C_IN)), L.Conv2D(C_MID, 1, name="conv"), boom,
                              L.GlobalAveragePooling2D(), L.Dense(K, activation="softmax", name="dense")])
    model.get_layer("conv").kernel.trainable = False  # a mixed state comes back exactly
    adapter = KerasAdapter(model)
    softmax = model.get_layer("dense").activation
    trainable = [v.trainable for v in model.variables]
    x = _batch()
    g = adapter.gradients(x, Target(channels=(1,)), layers=[1], wrt_input=True)
    assert g.logits and g.grads[1].any()
    boom.armed = True
    with pytest.raises(RuntimeError, match="boom"):  # another batch size: a new trace (TensorFlow, JAX) runs call
        adapter.gradients(x[:1], Target(channels=(1,)), layers=[1], wrt_input=True)
    assert _wrapped_calls(model) == []
    assert model.get_layer("dense").activation is softmax
    assert [v.trainable for v in model.variables] == trainable
    if keras.backend.backend() == "torch":
        import torch

        flags = [v.value.requires_grad for v in model.variables]
        assert flags == trainable  # what Keras set, restored after the pass turned them off
        assert all(v.value.grad is None for v in model.variables)
        assert torch.is_grad_enabled()


@pytest.mark.keras
@pytest.mark.gradients
def test_keras_need_output_false_stops_after_the_last_needed_layer(keras):
    from convlens.adapters.keras import KerasAdapter

    class Tripwire(keras.layers.Layer):
        armed = False

        def call(self, x):
            if self.armed:
                raise AssertionError("the pass went past the last needed layer")
            return x

    L = keras.layers
    trip = Tripwire(name="trip")
    model = keras.Sequential([keras.Input((H, W, C_IN)), L.Conv2D(C_MID, 1, name="conv"), L.ReLU(name="relu"),
                              trip, L.GlobalAveragePooling2D(), L.Dense(K)])
    adapter = KerasAdapter(model)
    trip.armed = True
    x = _batch()
    g = adapter.gradients(x, Target(layer=2, channels=(1,), reduce="mean"), layers=[1], need_output=False)
    assert g.output is None
    conv = g.activations[1]
    np.testing.assert_allclose(g.score, np.maximum(conv[..., 1], 0).mean(axis=(1, 2)), rtol=1e-5)
    want = np.zeros_like(conv)
    want[..., 1] = (conv[..., 1] > 0) / (H * W)
    np.testing.assert_allclose(g.grads[1], want, rtol=1e-5)
    with pytest.raises(AssertionError, match="past the last needed layer"):
        adapter.gradients(x, Target(layer=2, channels=(1,)), layers=[1])
    assert _wrapped_calls(model) == []


@pytest.mark.keras
@pytest.mark.gradients
def test_keras_bad_targets_and_a_backend_without_gradients(keras, monkeypatch):
    from convlens.adapters.keras import KerasAdapter

    adapter = KerasAdapter(_keras_tiny(keras))
    x = _batch()
    with pytest.raises(BadArgument, match=r"^class 1200 is out of range: the model has 4 classes \(0-3\)$"):
        adapter.gradients(x, Target(channels=(1200,)))
    with pytest.raises(LayerNotFound, match="row 9 does not exist"):
        adapter.gradients(x, Target(), layers=[9])
    assert adapter.gradients_unavailable() is None
    monkeypatch.setattr(adapter.keras.backend, "backend", lambda: "numpy")  # Keras's numpy backend has none
    why = adapter.gradients_unavailable()
    assert "numpy backend are not supported yet" in why and "Score-CAM, Eigen-CAM, occlusion" in why
    with pytest.raises(UnsupportedModel, match="not supported yet"):
        adapter.gradients(x, Target())


# --------------------------------------------------------------------------- ONNX (through onnx2torch)


def _onnx_file(model: nn.Module, path, shape=(1, C_IN, H, W)):
    torch.onnx.export(model.eval(), (torch.zeros(*shape),), str(path), input_names=["image"], dynamo=False)
    return path


class NHWCInput(nn.Module):
    """The closed-form network taking (N, H, W, C): the ONNX graph starts with a Transpose."""

    def __init__(self, final: nn.Module | None = None) -> None:
        super().__init__()
        self.net = _torch_tiny(final)

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_onnx_exact_gradients_through_the_conversion(tmp_path, layout):
    from convlens.adapters.onnx import OnnxAdapter

    if layout == "NCHW":
        path = _onnx_file(_torch_tiny(nn.Softmax(dim=1)), tmp_path / "tiny.onnx")
    else:
        path = _onnx_file(NHWCInput(nn.Softmax(dim=1)), tmp_path / "tiny.onnx", (1, H, W, C_IN))
    adapter = OnnxAdapter(path)
    assert adapter.channels_first is (layout == "NCHW")
    assert adapter.batch_size == 1  # a fixed batch of 1: the batch of 3 below goes in chunks
    assert adapter.final_activation == "softmax" and adapter.gradients_unavailable() is None
    conv_row = next(t.index for t in adapter.layers() if t.type == "Conv")
    x = _batch(3)
    for k in (1, 2):
        g = adapter.gradients(x, Target(channels=(k,)), layers=[conv_row], wrt_input=True)
        conv, d_conv, d_in, score = _expected(x, k)
        assert g.logits
        np.testing.assert_allclose(g.activations[conv_row], conv, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.grads[conv_row], d_conv, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.input_grad, d_in, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.score, score, rtol=1e-5)
        np.testing.assert_allclose(g.output.sum(axis=1), 1.0, rtol=1e-5)
    # per item classes and weights are cut per chunk with their own items; without the input
    # gradient, onnxruntime runs the conv and PyTorch the rest, the softmax's logits included
    g = adapter.gradients(x, Target(channels=(0, 1, 3), weights=(1.0, 2.0, -1.0)), layers=[conv_row])
    assert g.logits
    for i, (k, w) in enumerate(((0, 1.0), (1, 2.0), (3, -1.0))):
        np.testing.assert_allclose(g.grads[conv_row][i], w * _expected(x, k)[1][i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.score[i], w * _expected(x, k)[3][i], rtol=1e-5)
    with pytest.raises(BadArgument, match=r"^class 9 is out of range: the model has 4 classes \(0-3\)$"):
        adapter.gradients(x, Target(channels=(9,)))


def _unconvertible(path):
    """Conv -> GlobalLpPool, an operator onnxruntime runs and onnx2torch has no converter for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], name="conv"),
         helper.make_node("GlobalLpPool", ["conv"], ["pooled"], name="lp", p=2)],
        "lp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 2, 1, 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_onnx_a_graph_onnx2torch_cannot_convert_says_what_still_works(tmp_path):
    from convlens import Lens
    from convlens.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(_unconvertible(tmp_path / "lp.onnx"))
    x = np.ones((1, 4, 4, 3), np.float32)
    y = adapter.run(x, [], lambda i, a: None)  # onnxruntime runs it: forward-only methods work
    np.testing.assert_allclose(y.ravel(), [12.0, 12.0], rtol=1e-6)  # sqrt(16 * 3^2)
    why = adapter.gradients_unavailable()
    assert why == ("gradients of lp.onnx need its graph converted to PyTorch, and onnx2torch cannot convert "
                   "it (it has no converter for the ONNX operator GlobalLpPool); the forward-only "
                   "methods (Score-CAM, Eigen-CAM, occlusion) still work")
    with pytest.raises(UnsupportedModel) as err:
        adapter.gradients(x, Target(layer=1, channels=(0,)), layers=[1])
    assert str(err.value) == why and "\n" not in why
    assert Lens(tmp_path / "lp.onnx").feature_maps([x[0]], layers="all")  # the rest of convlens is untouched


def test_onnx_a_conversion_that_disagrees_with_onnxruntime_is_refused(tmp_path, monkeypatch):
    import onnx2torch

    from convlens.adapters.onnx import OnnxAdapter

    path = _onnx_file(_torch_tiny(), tmp_path / "tiny.onnx")
    real = onnx2torch.convert

    def off_by_a_little(*args, **kwargs):
        module = real(*args, **kwargs)
        module.register_forward_hook(lambda m, a, out: out + 0.01)  # 0.6% of the logits' scale
        return module

    monkeypatch.setattr(onnx2torch, "convert", off_by_a_little)
    adapter = OnnxAdapter(path)
    assert adapter.gradients_unavailable() is None  # the conversion itself worked
    with pytest.raises(UnsupportedModel, match=r"disagrees with onnxruntime on this input .*\(Score-CAM, "
                                               r"Eigen-CAM, occlusion\) still work$"):
        adapter.gradients(_batch(1), Target(channels=(1,)), layers=[1])
    good = OnnxAdapter(path)
    monkeypatch.setattr(onnx2torch, "convert", real)
    assert good.gradients(_batch(1), Target(channels=(1,)), layers=[1]).grads[1].any()


def test_onnx_without_onnx2torch_names_the_extra(tmp_path, monkeypatch):
    import sys

    from convlens import MissingDependency
    from convlens.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(_onnx_file(_torch_tiny(), tmp_path / "tiny.onnx"))
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import onnx2torch raises ImportError
    assert "pip install 'convlens[onnx-gradients]'" in adapter.gradients_unavailable()
    with pytest.raises(MissingDependency, match=r"convlens\[onnx-gradients\]"):
        adapter.gradients(_batch(1), Target())


def test_onnx_need_output_false_and_no_hook_left(tmp_path):
    from convlens.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(_onnx_file(_torch_tiny(), tmp_path / "tiny.onnx"))
    x = _batch(2)
    g = adapter.gradients(x, Target(layer=1, channels=(0,), reduce="center"), layers=[1], need_output=False)
    assert g.output is None
    np.testing.assert_allclose(g.score, (x @ W_CONV)[:, H // 2, W // 2, 0], rtol=1e-5)
    module = adapter._twin()[0]
    assert _hooks(module) == 0 and not module.training
    assert all(p.requires_grad for p in module.parameters())  # as onnx2torch made them, restored


class Exported(nn.Module):
    """What torch's exporter writes for a fresh network: equal zero biases stored once and shared
    through Identity nodes, and an adaptive pool as AveragePool-19 (opset 20), which onnx2torch
    converts only once the graph is brought down to opset 17."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.conv1.bias.zero_()
            self.conv2.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x))))).flatten(1))


def test_onnx_shared_weights_and_a_newer_opset_still_convert(tmp_path):
    import onnx

    from convlens.adapters.onnx import OnnxAdapter

    torch.manual_seed(3)
    model = Exported().eval()
    path = _onnx_file(model, tmp_path / "exported.onnx", (1, 3, 8, 8))
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"Identity", "AveragePool"} <= ops and graph.opset_import[0].version > 17  # the two cases
    onnx_adapter = OnnxAdapter(path)
    assert onnx_adapter.gradients_unavailable() is None
    torch_adapter = TorchAdapter(model, input_shape=(8, 8, 3))
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype(np.float32)
    rows = {a: [t.index for t in a.layers() if t.kind == "conv"] for a in (onnx_adapter, torch_adapter)}
    got = {a: a.gradients(x, Target(channels=(2,)), layers=rows[a], wrt_input=True) for a in rows}
    want, have = got[torch_adapter], got[onnx_adapter]
    np.testing.assert_allclose(have.score, want.score, rtol=1e-5)
    np.testing.assert_allclose(have.input_grad, want.input_grad, rtol=1e-4, atol=1e-7)
    for r_onnx, r_torch in zip(rows[onnx_adapter], rows[torch_adapter]):
        np.testing.assert_allclose(have.grads[r_onnx], want.grads[r_torch], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- parallel branches

W_B = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5], [1.0, 1.0, 0.0]], np.float32)
W_C = np.array([[0.0, 3.0, -1.0], [2.0, 0.0, 0.0], [-1.0, 0.5, 1.0]], np.float32)


def _branch_expected(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """d score / d (either branch's output), d score / d (their common input)."""
    a = x @ W_CONV
    d_branch = np.broadcast_to(W_DENSE[:, k] / (H * W), a.shape)
    return d_branch, np.broadcast_to((W_B + W_C) @ W_DENSE[:, k] / (H * W), a.shape)


class Branches(nn.Module):
    """a = conv(x); out = dense(gap(b(a) + c(a))): ``c`` runs after ``b`` but does not depend on it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(i, C_MID, 1, bias=False) for i in (C_IN, C_MID, C_MID))
        self.fc = nn.Linear(C_MID, K)
        with torch.no_grad():
            for conv, w in ((self.a, W_CONV), (self.b, W_B), (self.c, W_C)):
                conv.weight.copy_(torch.from_numpy(w.T.copy())[:, :, None, None])
            self.fc.weight.copy_(torch.from_numpy(W_DENSE.T.copy()))
            self.fc.bias.copy_(torch.from_numpy(B_DENSE))

    def forward(self, x):
        a = self.a(x)
        return self.fc((self.b(a) + self.c(a)).mean(dim=(2, 3)))


def test_torch_a_parallel_branch_gets_its_own_gradient():
    adapter = TorchAdapter(Branches(), input_shape=(H, W, C_IN))
    assert [t.name for t in adapter.layers()] == ["input", "a", "b", "c", "add", "fc"]  # b + c: a merge row
    x = _batch()
    for layers in ([2, 3], [1, 2, 3]):
        g = adapter.gradients(x, Target(channels=(1,)), layers=layers)
        d_branch, d_a = _branch_expected(x, 1)
        np.testing.assert_allclose(g.grads[2], d_branch, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.grads[3], d_branch, rtol=1e-5, atol=1e-7)  # not zeros
        if 1 in layers:
            np.testing.assert_allclose(g.grads[1], d_a, rtol=1e-5, atol=1e-7)


@pytest.mark.keras
@pytest.mark.gradients
def test_keras_a_parallel_branch_gets_its_own_gradient(keras):
    from convlens.adapters.keras import KerasAdapter

    L = keras.layers
    inp = keras.Input((H, W, C_IN))
    a = L.Conv2D(C_MID, 1, use_bias=False, name="a")(inp)
    b = L.Conv2D(C_MID, 1, use_bias=False, name="b")(a)
    c = L.Conv2D(C_MID, 1, use_bias=False, name="c")(a)
    out = L.Dense(K, name="fc")(L.GlobalAveragePooling2D(name="gap")(L.Add(name="add")([b, c])))
    model = keras.Model(inp, out)
    for name, w in (("a", W_CONV), ("b", W_B), ("c", W_C)):
        model.get_layer(name).set_weights([w[None, None]])
    model.get_layer("fc").set_weights([W_DENSE, B_DENSE])
    adapter = KerasAdapter(model)
    rows = {t.name: t.index for t in adapter.layers()}
    x = _batch()
    for _ in range(2):  # eager, then the traced graph on TensorFlow
        g = adapter.gradients(x, Target(channels=(1,)), layers=[rows["b"], rows["c"], rows["a"]])
        d_branch, d_a = _branch_expected(x, 1)
        np.testing.assert_allclose(g.grads[rows["b"]], d_branch, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.grads[rows["c"]], d_branch, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.grads[rows["a"]], d_a, rtol=1e-5, atol=1e-7)
        g = adapter.gradients(x, Target(channels=(1,)), layers=[rows["b"], rows["c"]])
        np.testing.assert_allclose(g.grads[rows["c"]], d_branch, rtol=1e-5, atol=1e-7)


def test_onnx_parallel_branches_and_the_part_left_to_onnxruntime(tmp_path):
    from convlens.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(_onnx_file(Branches(), tmp_path / "branches.onnx"))
    assert [t.type for t in adapter.layers()][1:4] == ["Conv", "Conv", "Conv"]
    x = _batch(2)
    for layers in ([2, 3], [1, 2, 3], [3]):
        g = adapter.gradients(x, Target(channels=(1,)), layers=layers)
        d_branch, d_a = _branch_expected(x, 1)
        for r in layers:
            np.testing.assert_allclose(g.grads[r], d_a if r == 1 else d_branch, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.score, g.output[:, 1], rtol=1e-6)  # no softmax: the output itself
    # the first conv's module never runs in PyTorch when only later rows are needed
    module = adapter._twin()[0]
    first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))

    def tripwire(*_):
        raise AssertionError("the first conv ran in PyTorch")

    handle = first.register_forward_hook(tripwire)
    try:
        g = adapter.gradients(x, Target(channels=(1,)), layers=[2, 3])
        np.testing.assert_allclose(g.grads[3], _branch_expected(x, 1)[0], rtol=1e-5, atol=1e-7)
        with pytest.raises(UnsupportedModel, match="the first conv ran in PyTorch"):
            adapter.gradients(x, Target(channels=(1,)), layers=[2], wrt_input=True)
    finally:
        handle.remove()
