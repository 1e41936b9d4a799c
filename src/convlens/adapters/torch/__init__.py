"""PyTorch modules, ``torch.export`` programs (``.pt2``) and torchvision models.

Intermediate outputs are captured with forward hooks, registered for one
forward pass and removed in ``finally`` (even when the pass raises). The layer
table comes from one probe pass on zeros with hooks on every module.

What a row is:

* every module call (the model itself excepted, unless it has no
  children). A call during which other modules were called is a container:
  its row comes after its contents' rows (it is their output, a ``block``),
  and theirs have it as their ``parent``. A container that subclasses a
  torch conv, pool or norm keeps that kind with its kernel and stride (an
  EfficientNet's static-same-padding ``Conv2d`` calling its own
  ``ZeroPad2d``). A module with children that computes everything itself
  (``MultiheadAttention`` calls its weights functionally) is a leaf.
* functional ops a container runs between its children's calls, where they
  merge branches or change geometry: ``+`` of two image-derived tensors
  (ResNet's ``out += identity``: ``layer1.0.add``, kind ``merge``),
  ``torch.cat`` (``merge``), ``F.interpolate``, ``F.pad``, ``flatten``
  (``reshape``), seen by a ``__torch_function__`` mode (:mod:`.ops`).
* rows are in the order their outputs are made, the input being row 0;
  functional rows are named after their container (``up1.cat``; at the
  top, the op alone: ``flatten``); names follow
  ``named_modules()`` (``layer1.0.conv1``); the k-th call of a module called
  several times is ``name#k`` (torchvision's ``BasicBlock`` calls its ``relu``
  twice: ``layer1.0.relu`` and ``layer1.0.relu#2``).
* tuple, list and dict outputs: each floating-point tensor in the output is a
  row. When there is only one (``MaxPool2d(return_indices=True)`` gives the
  pooled map and integer indices) the row keeps the module's name; otherwise
  rows are ``name:KEY`` with KEY the position or dict key, nested keys joined
  by dots (``lstm:0``, ``lstm:1.0``, ``heads:logits``). Integer tensors
  (indices, masks) are not rows; naming a module whose output holds no
  floating-point tensor says what it returns. The model's own output (what ``run`` returns)
  is the first floating-point tensor of whatever ``forward`` returns.

Layouts (the contract of :mod:`convlens.adapters.base`): batches arrive
``(N, H, W, C)`` and go into torch as ``(N, C, H, W)``; captured outputs with
3 or more axes have their channel axis (axis 1 in torch) moved last, except
outputs that are channels-last already (``Linear``/``LayerNorm`` on ConvNeXt's
``(N, H, W, C)`` or on transformer tokens ``(N, L, C)``; see
:func:`_is_channels_last`); kernels are ``(O, I, kh, kw)``, which is torch's
own ``Conv2d`` layout.

Input shape of a module that does not say: ``(224, 224, C)`` with ``C`` the
first convolution's ``in_channels`` is probed; a second probe at 160x160 tells
whether the module accepts any size, in which case the input shape is
``(None, None, C)`` and every output dimension that changed between the two
probes is ``None`` in the table.

Several inputs (:mod:`convlens.adapters.torch.inputs`): a ``forward`` with
several required parameters (or an optional one given a value), or a ``.pt2``
program with several user inputs, is fed the image in one input and the held
values (:mod:`convlens.adapters._inputs`) in the others at every call. The
probe pass follows the held inputs' tensors: what only they reach (a
conditioning ``Linear``, the other tower of a Siamese network) is no row, so
the table and its receptive fields are the image's.

The package, one concern a module: ``load`` (torch.load safety, ``.pt2`` programs, torchvision
names); ``inputs`` (a model's inputs and how each call passes them); ``ops`` (the functional ops that are rows, the
``__torch_function__`` mode); ``table`` (the layer table and the final activation, class ``TorchTable``); ``forward``
(``run``, class ``TorchForward``); ``grads`` (gradients, class :class:`TorchAdapter`, the adapter).
Each imports only from the ones before it.

:func:`open_torch_file` and :func:`open_torchvision` below open what the loaders return as adapters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._autograd import HookedRow, hooked_gradients
from .grads import TorchAdapter
from .load import (
    DOWNLOAD_TIMEOUT,
    PROBE_SIZE,
    SECOND_PROBE_SIZE,
    import_torch,
    load_state_dict_file,
    load_torch_file,
    load_torchvision,
)
from .table import torch_final_activation

__all__ = ["DOWNLOAD_TIMEOUT", "HookedRow", "PROBE_SIZE", "SECOND_PROBE_SIZE", "TorchAdapter", "hooked_gradients",
           "import_torch", "load_state_dict_file", "open_torch_file", "open_torchvision", "torch_final_activation"]


def open_torch_file(path: str | os.PathLike[str], *, input_shape: Sequence[int | None] | None = None,
                    trust: bool = False, preprocess: str | None = None, device: Any = None,
                    image_input: str | None = None, inputs: Mapping[str, Any] | None = None) -> TorchAdapter:
    """An adapter for a ``.pt2`` program or a ``.pt``/``.pth``/``.bin`` file holding a module.

    Args:
        path: a ``torch.export.save`` program (``.pt2``), or a ``torch.save``
            file of a whole ``nn.Module`` (needs ``trust``: unpickling runs code).
        input_shape: ``(H, W, C)``; ``.pt2`` files know theirs.
        trust: allow unpickling Python objects from the file.
        preprocess: the preprocessing preset; default ``unit``.
        device: where to run it (``auto``, ``cpu``, ``cuda:N``...); ``None``: where it was loaded (the CPU).
        image_input: a model with several inputs: the image input's name (see
            :mod:`convlens.adapters.torch.inputs`); ``None``: a ``.pt2``'s first
            image-like input, a module's first ``forward`` parameter.
        inputs: the values its other inputs are held at, one item each (no batch
            axis), channels first; a ``.pt2``'s inputs left out are held at zeros.

    Raises:
        BadModel: missing, corrupt, or a state dict (weights without an architecture).
        UnsafeModel: loading would unpickle objects and ``trust`` is off.
        UnsupportedModel: a TorchScript archive.
        BadArgument: ``image_input`` or ``inputs`` that do not fit the model's inputs.
    """
    module, name = load_torch_file(path, trust=trust)
    return TorchAdapter(module, input_shape=input_shape, preprocess=preprocess, name=name, device=device,
                        image_input=image_input, inputs=inputs)


def open_torchvision(name: str, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
                     trust: bool = False, preprocess: str | None = None, device: Any = None) -> TorchAdapter:
    """A torchvision model by name, e.g. ``resnet18`` (from ``torchvision:resnet18``).

    Args:
        name: a name from ``torchvision.models.list_models()``.
        weights: ``default``/``imagenet``/``None`` for the architecture's
            DEFAULT pretrained weights (downloaded once into torch's hub cache),
            ``none`` for random weights, or the path of a state dict file.
        input_shape: ``(H, W, C)`` or ``(H, W)``; default the weights' crop
            size (224 for most), 3 channels.
        trust: allow a weights file that holds pickled objects.
        preprocess: default ``torch`` (ImageNet mean and std).
        device: where to run it; ``None``: the CPU.

    Raises:
        BadModel: an unknown name.
        WeightsUnavailable: the download failed (offline) or the file does not fit.
    """
    model, shape, key = load_torchvision(name, weights=weights, input_shape=input_shape, trust=trust)
    return TorchAdapter(model, input_shape=shape, preprocess=preprocess or "torch", name=key, device=device)
