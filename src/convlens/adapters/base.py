"""The one contract every framework adapter implements.

Canonical layouts (what adapters hand over; nothing after this boundary
branches on the framework):

* feature maps, one batch: ``(N, H, W, C)`` for 2-D maps, ``(N, L, C)`` for
  1-D maps, ``(N, C)`` for vectors; ``float32`` numpy arrays, channels last.
* kernels: ``(O, I, kh, kw)`` float32 numpy arrays: O output filters, I input
  channels each filter sees (1 for depthwise), 1-D kernels have ``kh == 1``.
* input shape: ``(H, W, C)`` channels last, ``None`` for a free dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .._errors import BadArgument, LayerNotFound
from ..core.layers import KINDS, LayerInfo

__all__ = ["Adapter", "Gradients", "InputGradientSums", "InputItems", "LayerInfo", "OnOutput", "OnReduced", "KINDS",
           "RankedGradients", "Target", "first_line", "check_rows", "target_cotangent"]

#: Called once per captured layer output during a forward pass: (layer index, array).
OnOutput = Callable[[int, np.ndarray], None]
#: An optional adapter method's callback (``run_reducing``): (layer index, ``{op: (n, C)}`` of
#: :mod:`convlens.core.reduce`), the layer's output reduced where the model runs.
OnReduced = Callable[[int, Mapping[str, np.ndarray]], None]


@dataclass(frozen=True, eq=False)
class Target:
    """What a gradient pass differentiates: one scalar score per batch item.

    Declarative, so that no framework callable crosses the adapter boundary.
    The score of item ``n`` is ``sum(out[n] * cotangent[n])`` where ``out`` is
    the output of ``layer`` (the model's output for ``None``) in the canonical
    layout, and the cotangent is built in numpy by :meth:`cotangent_for`, so
    that every adapter only multiplies and sums. The batch's items are
    independent (adapters run the model in inference mode), so one backward
    pass of the summed score gives every item's own gradient.

    Attributes:
        layer: the table row whose output holds the score; ``None``: the
            model's output, read BEFORE a final softmax when the adapter can
            see one (a class score is a logit, as Grad-CAM defines it);
            :attr:`Gradients.logits` says whether it could.
        channels: per batch item, the class (model output) or channel index;
            one value is used for every item.
        reduce: over the spatial positions of a map-shaped output: ``"sum"``
            (a segmentation class's score summed over pixels), ``"mean"`` (a
            channel's mean, feature visualisation) or ``"center"`` (the unit at
            the centre position: a neuron).
        weights: per item multiplier (``-1`` for a negative objective); one
            value is used for every item.
        mask: ``(*spatial)`` or ``(N, *spatial)`` weights over positions (a box
            of ones), applied before ``reduce``; ``None``: every position.
        cotangent: ``(N, *shape)`` canonical array; when given it IS the
            cotangent and the fields above are ignored (e.g. the gradient of a
            diversity penalty computed in numpy, or of a detection's box score).
        output: which of the model's outputs holds the score (``layer`` is
            ``None``), by position in the adapter's ``output_names()``;
            ``None``: the first, as :meth:`Adapter.run` returns it.
    """

    layer: int | None = None
    channels: tuple[int, ...] = (0,)
    reduce: str = "sum"
    weights: tuple[float, ...] = (1.0,)
    mask: np.ndarray | None = field(default=None, repr=False)
    cotangent: np.ndarray | None = field(default=None, repr=False)
    output: int | None = None

    def cotangent_for(self, shape: Sequence[int]) -> np.ndarray:
        """The ``(N, *shape[1:])`` float32 array whose dot product with the output is the score.

        Args:
            shape: the canonical shape of the output the score is read from,
                batch first: ``(N, K)``, ``(N, L, C)`` or ``(N, H, W, C)``.

        Raises:
            ValueError: a channel index out of range, or a mask that does not
                fit (adapters turn it into their own error).
        """
        shape = tuple(int(d) for d in shape)
        n, c = shape[0], shape[-1]
        if self.cotangent is not None:
            cot = np.asarray(self.cotangent, np.float32)
            if cot.shape != shape:
                raise ValueError(f"cotangent of shape {cot.shape} for an output of shape {shape}")
            return cot
        channels = _per_item(self.channels, n, "channels")
        weights = _per_item(self.weights, n, "weights")
        bad = [int(ch) for ch in channels if not 0 <= int(ch) < c]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range for an output of {c} channels (0-{c - 1})")
        spatial = shape[1:-1]
        cot = np.zeros(shape, np.float32)
        if not spatial:
            cot[np.arange(n), np.asarray(channels, int)] = np.asarray(weights, np.float32)
            return cot
        if self.reduce == "center":
            plane = np.zeros(spatial, np.float32)
            plane[tuple(d // 2 for d in spatial)] = 1.0
        elif self.reduce in ("sum", "mean"):
            plane = np.ones(spatial, np.float32)
        else:
            raise ValueError(f"reduce={self.reduce!r}: use sum, mean or center")
        planes = np.broadcast_to(plane, (n, *spatial)).copy()
        if self.mask is not None:
            m = np.asarray(self.mask, np.float32)
            if m.shape not in (tuple(spatial), (n, *spatial)):
                raise ValueError(f"mask of shape {m.shape} for positions {spatial}")
            planes = planes * m
        if self.reduce == "mean":
            planes /= np.maximum(planes.reshape(n, -1).sum(axis=1), 1e-12).reshape((n,) + (1,) * len(spatial))
        for i in range(n):
            cot[i, ..., int(channels[i])] = planes[i] * float(weights[i])
        return cot


def target_cotangent(target: Target, shape: Sequence[int], layer: str | None = None) -> np.ndarray:
    """:meth:`Target.cotangent_for`, with convlens's own one-line error for a target that does not fit.

    Args:
        target: the target.
        shape: the canonical shape of the output the score is read from, batch first.
        layer: the name of the layer the score is read from; ``None``: the model's output.

    Raises:
        BadArgument: a class (channel) index out of range, or a mask or cotangent that does not fit.
    """
    c = int(shape[-1])
    if target.cotangent is None:
        bad = [int(ch) for ch in target.channels if not 0 <= int(ch) < c]
        if bad and layer is None:
            raise BadArgument(f"class {bad[0]} is out of range: the model has {c} classes (0-{c - 1})")
        if bad:
            raise BadArgument(f"channel {bad[0]} is out of range: layer {layer} has {c} channels (0-{c - 1})")
    try:
        return target.cotangent_for(shape)
    except ValueError as exc:
        where = f"layer {layer}" if layer is not None else "the model's output"
        raise BadArgument(f"the target does not fit {where}: {exc}") from None


def check_rows(table: Sequence[LayerInfo], layers: Sequence[int], target: Target, model: str) -> tuple[int, ...]:
    """The rows a gradient pass is asked for, sorted and unique; each, and the target's, must exist.

    Raises:
        LayerNotFound: a row outside the table.
    """
    rows = tuple(sorted({int(r) for r in layers}))
    for r in [*rows, *([] if target.layer is None else [int(target.layer)])]:
        if not 0 <= r < len(table):
            raise LayerNotFound(f"row {r} does not exist: {model} has rows 0-{len(table) - 1} "
                                "(Lens.layers() lists them)")
    return rows


def _per_item(values: Sequence[float] | Sequence[int], n: int, what: str) -> list:
    vals = list(values)
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise ValueError(f"{what}: {len(vals)} values for a batch of {n}")
    return vals


@dataclass
class Gradients:
    """What one gradient pass gives, every array canonical (channels last) float32 numpy.

    Attributes:
        output: the model's output for the batch, as :meth:`Adapter.run`
            returns it (``None`` when the pass stopped at the target layer).
        score: ``(N,)`` float64, each item's score (see :class:`Target`).
        activations: by table row, the outputs of the requested layers.
        grads: by table row, d score / d output, the same shapes.
        input_grad: d score / d input batch ``(N, H, W, C)`` (the preprocessed
            input), when asked for; else ``None``.
        logits: the model-output target was read before a final softmax.
    """

    output: np.ndarray | None
    score: np.ndarray
    activations: dict[int, np.ndarray]
    grads: dict[int, np.ndarray]
    input_grad: np.ndarray | None = None
    logits: bool = False


@dataclass
class RankedGradients:
    """What an adapter's optional ``run_ranked`` gives beside its forward pass's ``on_output`` calls.

    ``run_ranked(batch, wanted, on_output, *, layer, top) -> RankedGradients`` is
    :meth:`Adapter.run` (same arguments, same ``on_output`` calls, the same
    output) that ALSO records the gradients of each item's ``top`` best
    classes, read from the pass's own output, with respect to table row
    ``layer``: ONE forward pass, then one backward pass per rank from the
    model's output back to ``layer`` only (what a Grad-CAM of the top classes
    needs, without a second forward pass). The class score is read before a
    final softmax when the adapter can see one, as in :meth:`Adapter.gradients`.
    Adapters that cannot do it do not define the method, or raise
    :class:`~convlens._errors.UnsupportedModel` before any work; callers fall
    back to :meth:`Adapter.run` plus :meth:`Adapter.gradients`.

    Attributes:
        output: ``(N, K)`` the model's output, as :meth:`Adapter.run` returns it.
        layer: the table row differentiated.
        activations: ``(N, h, w, C)`` float32, the layer's output.
        classes: ``(N, top)`` int, each item's best classes in its output, best
            first (ties: the lower index first, as a stable sort).
        grads: ``(top, N, h, w, C)`` float32: ``grads[r, n]`` is d score of class
            ``classes[n, r]`` of item ``n`` / d ``activations[n]``.
        logits: the scores were read before a final softmax.
    """

    output: np.ndarray
    layer: int
    activations: np.ndarray
    classes: np.ndarray
    grads: np.ndarray
    logits: bool = False


# --------------------------------------------------------------------------- summed input gradients


@dataclass(frozen=True, eq=False)
class InputItems:
    """Many inputs per row whose input gradients are summed (SmoothGrad's noisy copies, IG's path).

    Declarative, so that an adapter can make the items on its own device and
    keep the sums there (an adapter's optional ``input_gradient_sums``, see
    :class:`InputGradientSums`). Item ``i`` of row ``r = item_row[i]`` is
    ``origin[r] + alpha[i] * delta[r] + sigma[r] * noise_i``, the terms
    without their array left out, ``noise_i`` standard Gaussian noise.

    Attributes:
        item_row: ``(I,)`` int, the row (of ``origin``) each item belongs to.
        origin: ``(M, H, W, C)`` float32, each row's starting input.
        weights: ``(I,)`` float64, each item's weight in its row's sum.
        delta: ``(M, H, W, C)`` float32, each row's direction (IG: image - baseline).
        alpha: ``(I,)`` float32, each item's step along ``delta``.
        sigma: ``(M,)`` float64, each row's noise standard deviation.
        seed: seed of the noise; ``None``: fresh noise each call.
        absolute: sum ``|gradient|`` instead of the gradient.
        keep: ``(I,)`` bool, the items whose model output to return.
    """

    item_row: np.ndarray
    origin: np.ndarray
    weights: np.ndarray
    delta: np.ndarray | None = None
    alpha: np.ndarray | None = None
    sigma: np.ndarray | None = None
    seed: int | None = None
    absolute: bool = False
    keep: np.ndarray | None = None

    def make(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The items ``idx`` as ``(B, H, W, C)`` float32 numpy, the noise drawn from ``rng`` (host path)."""
        r = self.item_row[idx]
        x = self.origin[r]
        if self.delta is not None and self.alpha is not None:
            x = x + self.alpha[idx, None, None, None] * self.delta[r]
        if self.sigma is not None:
            x = x + rng.normal(size=x.shape) * self.sigma[r, None, None, None]
        return np.asarray(x, np.float32)


@dataclass
class InputGradientSums:
    """What an adapter's optional ``input_gradient_sums`` gives.

    ``input_gradient_sums(items, target, *, batch_size, on_batch) -> InputGradientSums``
    makes the :class:`InputItems` ``batch_size`` at a time in the framework,
    on the model's device, runs one forward and one backward pass to the input
    per batch (as :meth:`Adapter.gradients` with ``wrt_input``), and keeps the
    weighted sums there until the end: one transfer of ``(M, H, W, C)``.
    ``target(idx)`` is the :class:`Target` of the items ``idx`` (numpy only);
    ``on_batch(n)`` is called after each batch of ``n`` items. The noise is
    drawn by the framework from ``items.seed``: the same seed gives the same
    sums on one device and framework, not the host path's numbers. Adapters
    without it do not define the method; callers then make the items in numpy
    and call :meth:`Adapter.gradients`.

    Attributes:
        total: ``(M, H, W, C)`` float64, each row's weighted sum of gradients.
        score: ``(I,)`` float64, each item's differentiated score.
        outputs: the model output of each kept item, by item index.
        logits: the scores were read before a final softmax.
    """

    total: np.ndarray
    score: np.ndarray
    outputs: dict[int, np.ndarray]
    logits: bool = False


@runtime_checkable
class Adapter(Protocol):
    """What convlens needs from a framework.

    Attributes:
        framework: short name such as ``"keras"``.
        name: the model's name.
        input_shape: ``(H, W, C)`` with ``None`` for free dimensions.
        preprocess: the preprocessing preset the model expects, if known.
        class_names: the model's class names when the adapter knows them
            (zoo and torchvision classifiers, the demo's digits), else ``None``.
        class_names_source: where they come from, in words ("ImageNet class names").
        final_activation: what the model's last operation is, read from its
            graph: ``"softmax"`` (its outputs are probabilities), ``"sigmoid"``,
            ``"linear"``, or ``None`` when the graph does not say.

    Optional (read with ``getattr``, so that an adapter without them still is one):
    ``device: str``, where the model runs (``"cpu"``, ``"cuda:0"``, ``"mps"``; see
    :func:`convlens.adapters.adapter_device`), and ``run_reducing(batch, wanted,
    on_output, reductions, on_reduced)``, :meth:`run` that reduces the layers in
    ``reductions`` (row -> ops of :mod:`convlens.core.reduce`) where the model runs
    and hands ``{op: (n, C)}`` to ``on_reduced`` (:data:`OnReduced`) instead.
    """

    framework: str
    name: str
    preprocess: str | None
    class_names: list[str] | None
    class_names_source: str
    final_activation: str | None

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """``(H, W, C)`` with ``None`` for free dimensions (read-only: adapters may compute it)."""
        ...

    def layers(self) -> list[LayerInfo]:
        """Every layer in execution order, the input first."""
        ...

    def run(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass of ``batch`` (``(N, H, W, C)`` float32, preprocessed).

        Calls ``on_output(index, array)`` for every wanted layer as soon as its
        output exists, in the canonical layout; returns the model's output.
        """
        ...

    def kernels(self, index: int) -> np.ndarray:
        """The kernel of a layer as ``(O, I, kh, kw)`` float32."""
        ...

    def gradients_unavailable(self) -> str | None:
        """``None`` when :meth:`gradients` works for this model, else why not, in one sentence.

        Cheap to call before any work, so that a gradient method on a
        forward-only model fails at once (captum's split: methods declare what
        they need, adapters what they can give).
        """
        ...

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass of ``batch`` (``(N, H, W, C)`` float32, preprocessed).

        Computes d score / d (each requested layer's output) and, with
        ``wrt_input``, d score / d input; never the parameters' gradients. The
        model's train/eval state and every flag the pass changes are restored,
        and no hook survives an exception. Each requested row's gradient is the
        full derivative of the score, also for a row on a branch parallel to
        another requested row (a ResNet shortcut). Row 0 (the input) may be
        requested: its activation is the batch, its gradient the input gradient.

        Args:
            batch: the preprocessed images.
            target: what to differentiate (:class:`Target`).
            layers: table rows whose outputs and gradients to return.
            wrt_input: also return the gradient with respect to the input.
            need_output: ``False`` allows the adapter to stop the forward pass
                after the last layer it needs (``Gradients.output`` is then ``None``).

        Raises:
            UnsupportedModel: the model cannot give gradients (see
                :meth:`gradients_unavailable`), or a requested row gave no
                output in this pass.
            MissingDependency: a package the gradients need is not installed.
            BadArgument: the target does not fit the model's output (a class
                out of range: see :func:`target_cotangent`).
            LayerNotFound: a row that is not in the table (see :func:`check_rows`).
        """
        ...


def first_line(text: str) -> str:
    """The first line of a framework's error message, at most 300 characters, for one-line errors."""
    return (text.strip().splitlines() or [""])[0][:300]
