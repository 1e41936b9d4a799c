"""The dataset view's entry point: ``Lens.dataset`` and ``convlens dataset`` call :func:`run_dataset`.

Per channel of each selected layer, over every image of a data set: the top-k
images by the channel's maximum (with its position, for the receptive-field
crop), the bottom-k by mean and the top-k of the negative, the channel's
health (mean, std, min, max, zero fraction, dead/constant/non-finite) and,
when the data has labels, its class selectivity. As in OpenAI Microscope and
the dataset examples of Olah et al., "Feature Visualization", Distill 2017,
https://distill.pub/2017/feature-visualization/ .

Layers without spatial maps (dense, global pooling: ``(N, C)`` outputs) are
allowed: their statistics, rankings and selectivity are as for any layer, the
position is ``(0, 0)`` and the crop of an example is the whole input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import BadArgument, MissingDependency
from .._progress import Progress
from ..adapters.base import Adapter
from ..core.layers import LayerInfo
from ..model import ModelSpec
from ..passes import missing_note
from .accumulate import DatasetAccumulator
from .engine import BatchRunner, Checkpoint, default_checkpoint_folder, run_local
from .sources import Source, open_source

if TYPE_CHECKING:
    from .result import DatasetResult

__all__ = ["ENGINES", "ModelSpec", "RAY_INSTALL", "run_dataset"]

#: The engines ``engine=`` accepts.
ENGINES = ("local", "ray")

#: What to install for ``engine="ray"``.
RAY_INSTALL = "pip install 'convlens[ray]'"


def _fingerprint(adapter: Adapter, source: Source, layers: Sequence[LayerInfo], *, k: int,
                 size: tuple[int, int], preprocess: str, batch_size: int,
                 model_spec: ModelSpec | None) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one for an identical result."""
    import hashlib

    names = hashlib.sha256("\n".join(r.name for r in source.records).encode()).hexdigest()
    return {"model": model_spec.model if model_spec else adapter.name,
            "framework": adapter.framework, "data": source.root, "kind": source.kind,
            "records": len(source.records), "record_names_sha256": names,
            "class_names": list(source.class_names) if source.class_names else None,
            "layers": [layer.name for layer in layers], "k": k, "input_size": list(size),
            "preprocess": preprocess, "batch_size": batch_size}


def _positive(value: Any, what: str, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadArgument(f"{what} must be a whole number of at least 1, not {value!r} ({flag})")
    return value


def run_dataset(adapter: Adapter, data: str | os.PathLike[str] | Source, *,
                layers: Sequence[LayerInfo], k: int = 9, engine: str = "local",
                batch_size: int = 32, size: int | Sequence[int] | None = None, preprocess: str,
                resume_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 1000,
                ray_address: str | None = None, workers: int | None = None,
                model_spec: ModelSpec | None = None, progress: Progress | None = None,
                resume: bool = False, out: str | os.PathLike[str] | None = None,
                model_name: str | None = None, gpus_per_worker: float | None = None,
                notes: Sequence[str] = ()) -> DatasetResult:
    """Stream a data set through a model and keep, per channel, its examples and health.

    Args:
        adapter: the model.
        data: a folder (``DATA/<class>/<image>`` gives labels), a glob, a text
            file of paths, a Parquet file or folder, or an opened :class:`Source`.
        layers: the selected layers (rows of ``adapter.layers()``).
        k: examples per channel and ranking (at most the number of images).
        engine: ``"local"`` (this process, a prefetch thread) or ``"ray"``.
        batch_size: images per forward pass.
        size: ``H`` or ``(H, W)`` for a model that accepts any size (default
            224x224 there); a fixed-size model uses its own.
        preprocess: the preprocessing preset.
        resume_dir: local engine: the checkpoint folder, written every
            ``checkpoint_every`` images and when interrupted. Default: beside
            ``out`` (``.OUT.convlens-resume``) when ``out`` is given, else none.
        checkpoint_every: images between checkpoints.
        ray_address: ``engine="ray"``: an existing cluster (default: a local one).
        workers: ``engine="ray"``: model actors (default: one per CPU of the cluster, at most one per batch).
        model_spec: how to reopen the model in Ray actors (required by ``engine="ray"``).
        progress: told ``start``, ``advance(images)`` per batch, ``finish``.
        resume: continue from the checkpoint in ``resume_dir`` (when there is
            one; otherwise start, and say so in the notes).
        out: also save the result there (atomically) and then remove the checkpoint.
        model_name: the model as people name it in the result (default the spec's or adapter's).
        gpus_per_worker: ``engine="ray"`` on GPUs: GPUs each model actor reserves (see
            :func:`convlens.dataset.ray_engine.run_ray`).
        notes: sentences the caller adds to the result's notes (a guessed preprocessing).

    Returns:
        The :class:`~convlens.dataset.result.DatasetResult`.

    Raises:
        BadArgument: empty or unreadable data, ``k`` larger than the number of
            images, bad sizes or counts, an unknown engine, a checkpoint of
            another run, no image readable at all.
        MissingDependency: ``engine="ray"`` without Ray installed.
    """
    from .result import DatasetResult

    if engine not in ENGINES:
        raise BadArgument(f"unknown engine {engine!r}; choose local or ray (--engine)")
    k = _positive(k, "k", "--k")
    batch_size = _positive(batch_size, "the batch size", "--batch-size")
    checkpoint_every = _positive(checkpoint_every, "the checkpoint interval", "--checkpoint-every")
    if not layers:
        raise BadArgument("the dataset view needs at least one layer; select some with --layers")
    if engine == "ray" and resume:
        raise BadArgument("--resume works with the local engine; the Ray engine retries failed "
                          "workers itself (run again without --resume)")
    if gpus_per_worker is not None and engine != "ray":
        raise BadArgument("--gpus-per-worker sets the Ray engine's actors; add --engine ray, or leave it out "
                          "(the local engine runs on --device)")
    if engine == "ray" and model_spec is None:
        raise BadArgument("the Ray engine reopens the model in each worker: pass a model file or "
                          "name (Lens('model.keras')), not an in-memory model")
    source = data if isinstance(data, Source) else open_source(data)
    if k > len(source.records):
        n = len(source.records)
        raise BadArgument(f"k={k} is larger than the {n} image{'s' if n != 1 else ''} of "
                          f"{source.description}; use --k {n} or fewer")
    classes = len(source.class_names) if source.class_names else 0
    name = model_name or (model_spec.model if model_spec else adapter.name)
    t0 = time.perf_counter()
    runner = BatchRunner(adapter, layers, source, size=size, preprocess=preprocess, k=k,
                         classes=classes)
    notes = [*notes, *source.notes, *([runner.size_note] if runner.size_note else [])]
    checkpoint = None
    if engine == "ray":
        placement: dict[str, Any] = {}
        acc = _run_ray(model_spec, source, layers, k=k, classes=classes, size=runner.input_size,
                       preprocess=preprocess, batch_size=batch_size, address=ray_address,
                       workers=workers, progress=progress, gpus_per_worker=gpus_per_worker,
                       placement=placement)
        if placement.get("note"):
            notes.append(str(placement["note"]))
    else:
        folder = resume_dir if resume_dir is not None else (
            default_checkpoint_folder(out) if out is not None else None)
        if folder is not None:
            checkpoint = Checkpoint(folder, _fingerprint(
                adapter, source, layers, k=k, size=runner.input_size, preprocess=preprocess,
                batch_size=batch_size, model_spec=model_spec))
        if resume and (checkpoint is None or not checkpoint.exists()):
            notes.append("--resume found no checkpoint; the run started from the first image")
            resume = False
        acc = run_local(runner, batch_size=batch_size, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, resume=resume, progress=progress)
    if acc.images == 0:
        first = acc.failures[0] if acc.failures else (-1, "?", "no image")
        raise BadArgument(f"none of the {len(source.records)} images of {source.description} could "
                          f"be read (first: {first[1]}: {first[2]}); check the data")
    if acc.missing():
        notes.append(missing_note(acc.missing()))
    result = DatasetResult(
        model=name, source=source, input_size=runner.input_size, k=k, engine=engine,
        layers=acc.results(), images=acc.images,
        failures=[(fname, reason) for _, fname, reason in acc.failures],
        seconds=time.perf_counter() - t0, notes=notes)
    if out is not None:
        result.save(out, progress=progress)
    if checkpoint is not None:
        checkpoint.remove()
    return result


def _run_ray(spec: ModelSpec | None, source: Source, layers: Sequence[LayerInfo], **options: Any
             ) -> DatasetAccumulator:
    """The Ray engine, imported only now: ``import convlens`` never imports Ray."""
    try:
        from .ray_engine import run_ray
    except ImportError as e:
        raise MissingDependency(f"the Ray engine is not available ({e}); install it with "
                                f"{RAY_INSTALL}") from None
    return run_ray(spec, source, layers, **options)

