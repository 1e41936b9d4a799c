"""Gradients of an ONNX model: its onnx2torch twin, checked against onnxruntime, through torch autograd
(:mod:`convlens.adapters._autograd`); the part before the needed rows runs in onnxruntime.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._errors import BadArgument, ConvlensError, MissingDependency, UnsupportedModel
from .._autograd import HookedRow, hooked_gradients
from .._device import exact_kernels, is_out_of_memory, out_of_memory
from ..base import Gradients, Target, check_rows, target_cotangent
from ..base import first_line as _first_line
from .forward import OnnxForward
from .load import IMAGE_TYPES

#: The opset that graphs of newer opsets are brought down to when onnx2torch (1.5) lacks a converter.
_TWIN_OPSET = 17
#: What still works when gradients do not.
_FORWARD_ONLY = "the forward-only methods (Score-CAM, Eigen-CAM, occlusion) still work"


@dataclass
class _Tail:
    """The converted module's part after a set of rows (see :meth:`OnnxAdapter._tail`)."""

    module: Any  # an fx.GraphModule sharing the converted module's submodules
    frontier_rows: list[int]  # its first inputs, in order: these rows' tensors
    inputs: list[str]  # the ONNX tensor name of each input (the graph input's name for the image)


def _fold_weight_identities(model: Any) -> dict[str, str]:
    """Turn ``Identity`` nodes of stored weights into weights of their own; their aliases.

    ``torch.onnx.export`` stores equal weights once and gives the copies through
    ``Identity`` nodes (the zero biases of a freshly initialised VGG16), and
    onnx2torch reads a convolution's weight and bias only from stored weights.

    Returns:
        new weight name -> the name of the stored weight it copies.
    """
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    aliases: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in stored \
                and node.output[0] not in stored and node.output[0] not in outputs:
            copy = graph.initializer.add()
            copy.CopyFrom(stored[node.input[0]])
            copy.name = node.output[0]
            stored[copy.name] = copy
            aliases[copy.name] = aliases.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if aliases:
        del graph.node[:]
        graph.node.extend(keep)
    return aliases


def _tensors(out: Any) -> list[Any]:
    """The tensors in a (nested) module output, in order."""
    if hasattr(out, "is_floating_point"):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _joined(parts: list[tuple[int, Gradients]]) -> Gradients:
    """Gradients of consecutive chunks of a batch as one, each chunk cut to its first ``keep`` items."""
    if len(parts) == 1 and len(parts[0][1].score) == parts[0][0]:
        return parts[0][1]

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        if any(a is None for a in arrays):
            return None
        return np.concatenate([a[:keep] for (keep, _), a in zip(parts, arrays)])  # type: ignore[index]

    first = parts[0][1]
    return Gradients(
        output=cat([g.output for _, g in parts]),
        score=cat([g.score for _, g in parts]),  # type: ignore[arg-type]
        activations={r: cat([g.activations[r] for _, g in parts]) for r in first.activations},  # type: ignore[misc]
        grads={r: cat([g.grads[r] for _, g in parts]) for r in first.grads},  # type: ignore[misc]
        input_grad=cat([g.input_grad for _, g in parts]),
        logits=first.logits)


class OnnxAdapter(OnnxForward):
    """An ONNX model behind convlens's adapter contract, run by onnxruntime on the CPU.

    Input layout rule: a rank-4 input is NCHW when its dim 1 is 1 or 3 and its
    last dim is not, NHWC when its last dim is 1 or 3 and dim 1 is not; when
    that does not decide (both or neither are 1 or 3, or they are symbolic),
    ``input_shape``'s channel count decides if given, then an input that goes
    straight into a ``Transpose`` with ``perm=[0, 3, 1, 2]`` is NHWC, and
    otherwise it is NCHW, ONNX's own convention. The batch that :meth:`run`
    receives is always ``(N, H, W, C)`` float32 and is transposed for NCHW models.

    Layer rows: the input, then one row per node whose first output is a
    floating-point tensor computed from the input image. Nodes that only
    compute constants (``Constant``, weights behind ``Identity``,
    ``DequantizeLinear`` of weights) or shapes and indexes (``Shape``,
    ``Gather`` on shapes, ``Cast`` to int64) are plumbing and get no row; a row
    whose input went through plumbing names the plumbing's own parents.

    Args:
        source: a path to a ``.onnx`` file (external data files next to it are
            read), or an ``onnx.ModelProto`` with its weights loaded.
        input_shape: ``(H, W, C)`` filling in the input's free dimensions.
        preprocess: the preprocessing preset the model expects, if known.
        image_input: a graph with several inputs: the one the images fill;
            ``None``: the first that looks like an image (rank 4, floats or uint8).
        inputs: the values the other graph inputs are held at, by name, one
            item each (no batch axis) as the graph takes them; left out: zeros
            where the shape is fixed, with a note (:mod:`convlens.adapters._inputs`).
            Every onnxruntime run and the gradient twin get them, batched.

    Raises:
        BadModel: the file is missing, corrupt, truncated, or its external
            data file is missing.
        BadArgument: ``image_input`` or ``inputs`` do not fit the graph's inputs.
        UnsupportedModel: an input other than the image is not a numeric tensor.
        MissingDependency: onnx or onnxruntime is not installed.
    """

    def __init__(self, source: Any, *, input_shape: Sequence[int | None] | None = None,
                 preprocess: str | None = None, image_input: str | None = None,
                 inputs: Mapping[str, Any] | None = None) -> None:
        super().__init__(source, input_shape=input_shape, preprocess=preprocess, image_input=image_input,
                         inputs=inputs)
        self._twin_cache: tuple[Any, dict[str, tuple[Any, int, int]]] | None = None  # onnx2torch's module
        self._twin_error: str | None = None  # why the conversion failed, once it has
        self._twin_checked: set[tuple[int, ...]] = set()  # input shapes on which it agreed with onnxruntime
        self._tails: dict[tuple[int, ...], _Tail] = {}  # the converted module after each frontier (_tail)

    def randomized(self, rows: Sequence[int], seed: int) -> OnnxAdapter:
        """A copy with ``rows``' weights re-drawn (see :mod:`convlens.adapters.onnx.randomize`)."""
        from .randomize import randomized

        return randomized(self, rows, seed)  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- gradients

    #: The converted module's output may differ from onnxruntime's by this much of the output's
    #: largest magnitude (float32 kernels accumulate in different orders; a wrong conversion is
    #: off by far more).
    TWIN_TOLERANCE = 1e-3

    def gradients_unavailable(self) -> str | None:
        """Why gradients cannot be had, or ``None``; converts the graph once (cached) to know."""
        if self._not_image is not None:
            return self._not_image
        try:
            self._twin()
        except (UnsupportedModel, MissingDependency) as exc:
            return str(exc)
        return None

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """Gradients through the graph converted to PyTorch by onnx2torch (see :meth:`Adapter.gradients`).

        The conversion is made once and checked against onnxruntime's own
        output on the first batch of each input shape (within
        :attr:`TWIN_TOLERANCE` of the output's largest magnitude) before any
        gradient is returned. Rows map to the converted module by their ONNX
        tensor names; the pass itself is :func:`convlens.adapters._autograd.hooked_gradients`.
        Without the input gradient, onnxruntime computes the graph up to the
        needed rows and PyTorch only what follows them (see :meth:`_tail`): a
        Grad-CAM pass at the last conv costs about one onnxruntime forward pass.
        Models with a fixed batch size get the batch in chunks of that size.

        Raises:
            MissingDependency: torch or onnx2torch is not installed.
            UnsupportedModel: onnx2torch cannot convert the graph, or its
                conversion disagrees with onnxruntime on this input.
        """
        if self._not_image is not None:
            raise UnsupportedModel(self._not_image)
        module, by_tensor = self._twin()
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise BadArgument(f"expected a batch of images (N, H, W, C), got shape {x.shape}")
        dtype = IMAGE_TYPES[self._input_type]
        if wrt_input and dtype == np.uint8:
            raise UnsupportedModel(f"{self._label} takes uint8 pixels, which have no gradient; pick a layer "
                                   "instead of the input")
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        hooked: dict[int, Any] = {}
        for r in sorted(needed - {0}):
            tensor = self._row_tensor[r]
            if tensor not in by_tensor:
                raise UnsupportedModel(f"layer {table[r].name} has no counterpart in the PyTorch conversion of "
                                       f"{self._label}; pick another layer")
            mod, index, count = by_tensor[tensor]
            hooked[r] = HookedRow(mod, 0, (index,) if count > 1 else (), self._layout.get(tensor) == "NHWC")
        out_node = self._output_node()
        softmax = None
        if out_node is not None and out_node.op_type in ("Softmax", "LogSoftmax") \
                and self._graph_output in by_tensor:
            softmax = by_tensor[self._graph_output][0]
        where = None if target.layer is None else table[int(target.layer)].name
        tail = None if wrt_input or 0 in needed or not needed else self._tail(needed)
        if tail is not None and softmax is not None and target.layer is None and not any(
                n.op == "call_module" and tail.module.get_submodule(n.target) is softmax
                for n in tail.module.graph.nodes):
            tail = None  # the logits before the final softmax are read in PyTorch: keep it in
        n = len(x)
        size = self.batch_size if self.batch_size is not None and self.batch_size != n else n
        full: dict[tuple[int, ...], np.ndarray] = {}
        parts: list[tuple[int, Gradients]] = []
        for offset in range(0, n, size):
            chunk = x[offset:offset + size]
            keep = len(chunk)
            if keep < size:  # a fixed-size model: pad the last chunk with zeros
                chunk = np.concatenate([chunk, np.zeros((size - keep, *chunk.shape[1:]), np.float32)])

            def cotangent(shape: tuple[int, ...], offset: int = offset, keep: int = keep) -> np.ndarray:
                whole = (n, *shape[1:])
                if whole not in full:
                    full[whole] = target_cotangent(target, whole, where)
                part = full[whole][offset:offset + keep]
                return np.concatenate([part, np.zeros((shape[0] - keep, *shape[1:]), np.float32)])

            feed = self._feed(chunk)
            self._check_twin(module, feed)

            def attempt(tail: _Tail | None, feed: np.ndarray = feed, chunk: np.ndarray = chunk,
                        cotangent: Callable[[tuple[int, ...]], np.ndarray] = cotangent) -> Gradients:
                forward, given = self._whole_forward(module), None
                if tail is not None:  # onnxruntime runs the graph up to the needed rows, torch the rest
                    forward, given = self._tail_inputs(tail, feed)
                return hooked_gradients(
                    module, forward, self._torch_input(feed), chunk, hooked, rows, target.layer,
                    cotangent, wrt_input=wrt_input, need_output=need_output, softmax=softmax, given=given,
                    output=target.output,
                    input_channels_last=not self.channels_first,
                    output_channels_last=self._layout.get(self._graph_output) == "NHWC",
                    no_output=lambda r: UnsupportedModel(
                        f"layer {table[r].name} (row {r}) gave no output in the PyTorch conversion of "
                        f"{self._label}; pick another layer"))

            try:
                got = attempt(tail)
            except UnsupportedModel:
                if tail is None:
                    raise
                # a tail fed with onnxruntime's values of shape computations (YOLO's anchor grid) can
                # disagree with onnx2torch's own: the whole conversion computes them itself
                tail = None
                got = attempt(None)
            parts.append((keep, got))
        return _joined(parts)

    def _tail(self, needed: set[int]) -> _Tail | None:
        """The part of the converted module that follows the needed rows, as its own module.

        The *frontier* is the needed rows that no other needed row leads to;
        the tail computes everything downstream of them from their values, and
        takes as inputs too whatever else it reads (a shortcut branch's tensor,
        the image): onnxruntime computes all of those in one pass. Cached per
        frontier. ``None`` (use the whole module) when a frontier row is one
        output of a multi-output node or an input cannot be named.
        """
        from torch import fx

        module = self._twin()[0]
        nodes: dict[str, Any] = {}  # ONNX tensor name -> fx node giving it
        owner: dict[int, Any] = {}  # id(submodule) -> its call_module node
        for node in module.graph.nodes:
            if node.op == "call_module":
                owner[id(module.get_submodule(node.target))] = node
        graph_inputs = iter(self._graph_inputs())
        for node in module.graph.nodes:
            if node.op == "placeholder":  # onnx2torch makes one per graph input, in the graph's order
                nodes[next(graph_inputs, self.input_name)] = node
            elif node.op == "call_module":
                outputs = tuple(module.get_submodule(node.target).onnx_mapping.outputs)
                if len(outputs) == 1:
                    nodes[outputs[0]] = node
            elif node.op == "call_function" and node.args and getattr(node.args[0], "op", "") == "call_module":
                source = module.get_submodule(node.args[0].target)
                outputs = tuple(source.onnx_mapping.outputs)
                if len(outputs) > 1 and isinstance(node.args[1], int):  # getitem(node, i)
                    nodes[outputs[node.args[1]]] = node
        name_of = {id(node): name for name, node in nodes.items()}
        starts = {}
        for row in sorted(needed):
            node = nodes.get(self._row_tensor[row])
            if node is None:
                return None
            starts[row] = node

        def below(node: Any) -> set[int]:
            seen: set[int] = set()
            todo = list(node.users)
            while todo:
                n = todo.pop()
                if id(n) not in seen:
                    seen.add(id(n))
                    todo.extend(n.users)
            return seen

        downstream = {row: below(node) for row, node in starts.items()}
        frontier_rows = [r for r, node in starts.items()
                         if not any(id(node) in downstream[o] for o in starts if o != r)]
        key = tuple(frontier_rows)
        if key in self._tails:
            return self._tails[key]
        frontier = {id(starts[r]): r for r in frontier_rows}
        inside = set().union(*(downstream[r] for r in frontier_rows)) - set(frontier)
        graph = fx.Graph()
        env: dict[int, Any] = {}
        inputs: list[str] = []
        for r in frontier_rows:
            env[id(starts[r])] = graph.placeholder(f"row_{r}")
            inputs.append(self._row_tensor[r])

        def value(n: Any) -> Any:
            if id(n) in env:
                return env[id(n)]
            if n.op == "get_attr":
                env[id(n)] = graph.node_copy(n)
                return env[id(n)]
            if id(n) not in name_of:
                raise LookupError(n.name)
            env[id(n)] = graph.placeholder(f"side_{len(inputs)}")
            inputs.append(name_of[id(n)])
            return env[id(n)]

        try:
            for node in module.graph.nodes:
                if node.op == "output":
                    graph.node_copy(node, value)
                elif id(node) in inside:
                    env[id(node)] = graph.node_copy(node, value)
        except LookupError:
            return None
        tail = _Tail(fx.GraphModule(module, graph), frontier_rows, inputs)
        self._tails[key] = tail
        while len(self._tails) > 4:
            self._tails.pop(next(iter(self._tails)))
        return tail

    def _tail_inputs(self, tail: _Tail, feed: np.ndarray) -> tuple[Callable[[Any], Any], dict[int, Any]]:
        """Run onnxruntime for a tail's inputs; its forward function and the frontier rows' tensors."""
        import torch

        fed = self._graph_feed(feed)  # the image and the held inputs, as onnxruntime takes them
        extra = [name for name in tail.inputs if name not in fed]
        values: dict[str, np.ndarray] = dict(fed)
        if extra:
            session = self._session(tuple(sorted(set(extra))), only=True)
            values.update(zip(extra, self._run_session(session, feed, extra)))
        # a held input for one item is a read-only broadcast view, which torch wants copied
        arrays = [np.ascontiguousarray(values[name]) for name in tail.inputs]
        args = [torch.from_numpy(a if a.flags.writeable else a.copy()).to(self._twin_device()) for a in arrays]
        given = dict(zip(tail.frontier_rows, args))
        run = self._twin_forward(tail.module)

        def forward(_: Any) -> Any:
            return run(*args)

        return forward, given

    def _graph_inputs(self) -> list[str]:
        """The graph's inputs, in its order (the converted module's arguments)."""
        return [s.name for s in self.held_inputs.slots] if self.held_inputs is not None else [self.input_name]

    def _whole_forward(self, module: Any) -> Callable[[Any], Any]:
        """The converted module as a function of the image tensor: the held inputs (batched, on the
        twin's device, in the graph's dtypes) fill its other arguments; they never get a gradient."""
        held = self.held_inputs
        run = self._twin_forward(module, 0 if held is None else held.image)
        if held is None:
            return run  # type: ignore[no-any-return]

        def forward(x: Any) -> Any:
            import torch

            where = x.device
            return run(*(a if a is x else torch.from_numpy(np.array(a)).to(where)  # a writable copy
                         for a in held.arguments(x, int(x.shape[0]))))
        return forward

    def _torch_input(self, feed: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(feed.copy()).to(self._twin_device())

    def _twin_device(self) -> str:
        """Where the onnx2torch twin runs: onnxruntime's CUDA GPU when torch sees it too, else the CPU."""
        if self.device.startswith("cuda"):
            import torch

            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if torch.cuda.is_available() and index < torch.cuda.device_count():
                return f"cuda:{index}"
        return "cpu"

    def _place_twin(self, module: Any) -> None:
        where = self._twin_device()
        if getattr(module, "_convlens_device", None) != where:
            module.to(where)
            module._convlens_device = where

    def _twin_forward(self, module: Any, shown: int = 0) -> Any:
        """``module`` called with convlens's errors; ``shown``: the argument whose shape a failure names."""
        def forward(*x: Any) -> Any:
            try:
                return module(*x)
            except ConvlensError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise out_of_memory(self._twin_device(), f"a batch of {int(x[shown].shape[0])} through the "
                                        f"PyTorch conversion of {self._label}") from None
                raise UnsupportedModel(
                    f"the PyTorch conversion of {self._label} (onnx2torch) failed on input {tuple(x[shown].shape)}: "
                    f"{type(exc).__name__}: {_first_line(str(exc))}; {_FORWARD_ONLY}") from None
        return forward

    def _twin(self) -> tuple[Any, dict[str, tuple[Any, int, int]]]:
        """The graph as a PyTorch module (onnx2torch, made once), and where each ONNX tensor comes
        out of it: tensor name -> (submodule, output index, output count).

        Before converting: weights behind ``Identity`` nodes become stored weights
        (:func:`_fold_weight_identities`), and a graph with an operator version
        onnx2torch has no converter for (torch's exporter writes opset 20, whose
        ``AveragePool`` is version 19) is brought down to :data:`_TWIN_OPSET`
        first, when the ONNX version converter can. Both are done on the
        skeleton (no weight copied); the weights are filled in last.
        """
        if self._twin_cache is not None:
            self._place_twin(self._twin_cache[0])
            return self._twin_cache
        if self._twin_error is not None:
            raise UnsupportedModel(self._twin_error)
        try:
            import onnx2torch
            import torch  # noqa: F401
            from onnx2torch.node_converters import get_converter
        except ImportError as exc:
            raise MissingDependency(f"gradients of ONNX models convert the graph to PyTorch with onnx2torch "
                                    f"({exc}); run: pip install 'convlens[onnx-gradients]'") from None
        from onnx import version_converter

        def unconverted(model: Any) -> str | None:
            versions = {o.domain or "": o.version for o in model.opset_import}
            for node in model.graph.node:
                try:
                    get_converter(domain=node.domain or "", operation_type=node.op_type,
                                  version=versions.get(node.domain or "", 1))
                except NotImplementedError:
                    return str(node.op_type)
            return None

        def refuse(reason: str) -> UnsupportedModel:
            self._twin_error = (f"gradients of {self._label} need its graph converted to PyTorch, and "
                                f"onnx2torch cannot convert it ({reason}); {_FORWARD_ONLY}")
            return UnsupportedModel(self._twin_error)

        graph = self.onnx.ModelProto()
        graph.CopyFrom(self._skeleton)
        aliases = _fold_weight_identities(graph)
        missing = unconverted(graph)
        opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)
        if missing is not None and opset > _TWIN_OPSET:
            try:
                lower = version_converter.convert_version(graph, _TWIN_OPSET)
            except Exception:
                lower = None
            if lower is not None and unconverted(lower) is None:
                graph, missing = lower, None
        if missing is not None:
            raise refuse(f"it has no converter for the ONNX operator {missing}")
        try:
            module = self._convert(onnx2torch, graph, aliases)
        except ConvlensError:
            raise
        except Exception as exc:
            raise refuse(f"{type(exc).__name__}: {_first_line(str(exc))}") from None
        module.eval()
        self._place_twin(module)
        by_tensor: dict[str, tuple[Any, int, int]] = {}
        for sub in module.modules():
            mapping = getattr(sub, "onnx_mapping", None)
            outputs = tuple(getattr(mapping, "outputs", ()) or ())
            for i, name in enumerate(outputs):
                by_tensor.setdefault(name, (sub, i, len(outputs)))
        self._twin_cache = (module, by_tensor)
        return self._twin_cache

    def _convert(self, onnx2torch: Any, graph: Any, aliases: dict[str, str]) -> Any:
        """onnx2torch's module for a skeleton graph, its stubs filled from :meth:`_weight` (``aliases``:
        weights that copy another, see :func:`_fold_weight_identities`)."""
        from onnx import numpy_helper

        for t in graph.graph.initializer:
            source = aliases.get(t.name, t.name)
            if source in self._shared:
                t.CopyFrom(numpy_helper.from_array(self._weight(source), t.name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnx2torch warns about ops it converts approximately
            return onnx2torch.convert(graph, attach_onnx_mapping=True)

    def _check_twin(self, module: Any, feed: np.ndarray) -> None:
        """The converted module must give onnxruntime's output on this input (once per input shape)."""
        import torch

        if feed.shape in self._twin_checked:
            return
        session = self._session(())
        want = np.asarray(self._run_session(session, feed, [self._graph_output])[0], np.float64)
        with torch.no_grad(), exact_kernels():  # TF32 would be off by more than the tolerance
            y = self._whole_forward(module)(self._torch_input(feed))
        got = next((t for t in _tensors(y) if t.is_floating_point()), None)
        scale = float(np.abs(want).max()) if want.size else 0.0
        if got is None or tuple(got.shape) != want.shape:
            shape = None if got is None else tuple(got.shape)
            raise UnsupportedModel(f"the PyTorch conversion of {self._label} (onnx2torch) gives an output of "
                                   f"shape {shape}, onnxruntime {want.shape}; {_FORWARD_ONLY}")
        err = float(np.abs(got.detach().cpu().double().numpy() - want).max()) if want.size else 0.0
        if not err <= self.TWIN_TOLERANCE * scale + 1e-6:
            raise UnsupportedModel(
                f"the PyTorch conversion of {self._label} (onnx2torch) disagrees with onnxruntime on this "
                f"input (outputs differ by up to {err:.3g}, {err / max(scale, 1e-30):.2g} of their largest "
                f"magnitude {scale:.3g}; allowed {self.TWIN_TOLERANCE:g}), so its gradients would not be "
                f"this model's; {_FORWARD_ONLY}")
        self._twin_checked.add(feed.shape)

