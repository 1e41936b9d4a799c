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

H, W, C_IN, C_MID, K = 3, 4, 2, 3, 4
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
                                      (nn.Sigmoid(), "sigmoid", False), (None, None, False)):
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
    np.testing.assert_allclose(g.score, conv[..., 2].mean(axis=(1, 2)), rtol=1e-5)
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
    np.testing.assert_allclose(g.score, (x @ W_CONV)[..., 2].mean(axis=(1, 2)), rtol=1e-5)
    assert adapter.final_activation == "linear"


@pytest.mark.keras
@pytest.mark.parametrize("final", ["softmax", "layer", "sigmoid"])
def test_keras_a_final_softmax_is_differentiated_before_it(keras, final):
    from convlens.adapters.keras import KerasAdapter

    model = _keras_tiny(keras, final=final, kind="nested" if final == "layer" else "sequential")
    adapter = KerasAdapter(model)
    assert adapter.final_activation == ("sigmoid" if final == "sigmoid" else "softmax")
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
    np.testing.assert_allclose(g.output.sum(axis=1), 1.0, rtol=1e-5)  # the output stays the model's
    dense = model.get_layer("dense")
    assert dense.activation is keras.activations.get(final if final != "layer" else "linear")


def _wrapped_calls(model) -> list[str]:
    return [layer.name for layer in model._flatten_layers(include_self=False) if "call" in vars(layer)]


@pytest.mark.keras
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
    with pytest.raises(RuntimeError, match="boom"):
        adapter.gradients(x, Target(channels=(1,)), layers=[1], wrt_input=True)
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
def test_keras_bad_targets_and_the_jax_backend(keras, monkeypatch):
    from convlens.adapters.keras import KerasAdapter

    adapter = KerasAdapter(_keras_tiny(keras))
    x = _batch()
    with pytest.raises(BadArgument, match=r"^class 1200 is out of range: the model has 4 classes \(0-3\)$"):
        adapter.gradients(x, Target(channels=(1200,)))
    with pytest.raises(LayerNotFound, match="row 9 does not exist"):
        adapter.gradients(x, Target(), layers=[9])
    assert adapter.gradients_unavailable() is None
    monkeypatch.setattr(adapter.keras.backend, "backend", lambda: "jax")
    why = adapter.gradients_unavailable()
    assert "jax backend are not supported yet" in why and "Score-CAM, Eigen-CAM, occlusion" in why
    with pytest.raises(UnsupportedModel, match="not supported yet"):
        adapter.gradients(x, Target())
