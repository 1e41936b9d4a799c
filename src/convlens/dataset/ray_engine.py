"""The Ray engine of the dataset view: the same per-batch work as the local engine, on a cluster.

How the work divides:

* **The driver** lists the data (:func:`~convlens.dataset.sources.open_source`, no
  decoding), cuts the records into the same consecutive batches of
  ``batch_size`` as the local engine, and hands Ray Data one row per batch: its
  index and its records as JSON (about 100 bytes an image; no pixels cross
  the object store).
* **Model actors** (``map_batches`` over an actor pool of ``workers``): each
  opens the model once (``open_model`` from the :class:`ModelSpec`) and builds
  one :class:`~convlens.dataset.engine.BatchRunner`, which reads its batch with
  convlens's own decoder (:func:`~convlens.dataset.sources.read_batch`),
  prepares it (:func:`convlens.images.prepare`), runs ONE forward pass on the pass
  engine (:func:`convlens.passes.run_batches`, as the local engine does) and folds
  the maps into a fresh :class:`DatasetAccumulator`. The actor returns that
  accumulator's :meth:`~DatasetAccumulator.state` as ``np.savez`` bytes: plain
  arrays, read back with ``allow_pickle=False``.
* **The driver** merges each batch's state as it arrives (exact: top-k merge
  and Chan's moments merge are associative) and drops a batch it has merged
  already, by batch index and by image id, so a retried batch is never counted
  twice. Its memory is O(layers x channels x k), plus the listing (about
  0.5 KB an image, with its batch rows) and one byte per image.

Why the actors read the images rather than ``ray.data.read_images``: equality
with the local engine. ``read_images`` decodes with its own PIL path and
resizes to 8-bit, where convlens applies EXIF orientation, composites
transparency on white, rescales 16-bit data and resizes antialiased in
float32; the same call (``read_batch`` then ``prepare``) in both engines makes
the inputs of every forward pass bit-identical, and the batches are the same
records, so a batched convolution even sums in the same order. Reading inside
the actor also keeps Parquet row groups read once per batch, as locally. The
price: every node must see the data at the same path (a shared file system),
as it must for ``read_images`` of local paths.

Ray is imported inside functions only: ``import convlens`` never imports it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument, ConvlensError, MissingDependency
from .._progress import NullProgress, Progress
from .._stderr import native_stderr_silenced
from ..core.layers import LayerInfo
from .accumulate import DatasetAccumulator
from .sources import Record, Source

__all__ = ["INSTALL_HINT", "RETRIES", "gpu_plan", "run_ray"]

#: What to run when Ray is missing.
INSTALL_HINT = "pip install 'convlens[ray]'"
#: Times Ray restarts a dead model actor, and retries a batch whose actor died.
RETRIES = 3
#: Seconds to wait for a cluster's address to answer before saying it cannot be reached.
CONNECT_TIMEOUT = 10.0
#: Seconds to wait for ``ray.init`` once the address answers (a port that is not Ray's).
INIT_TIMEOUT = 60.0
#: Ray Data blocks of batches at most (beyond, a block holds several consecutive batches).
MAX_BLOCKS = 2000
#: Environment variables the driver passes on to the model actors.
FORWARDED_ENV = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "PYTORCH_CUDA_ALLOC_CONF", "TF_FORCE_GPU_ALLOW_GROWTH")
#: Test hook: a path; the first actor batch that can rename that file away exits its
#: process (os._exit), as a worker killed mid-run would. Unset: no effect.
FAIL_ONCE_ENV = "CONVLENS_RAY_FAIL_ONCE"


def run_ray(spec: Any, source: Source, layers: Sequence[LayerInfo], *, k: int, classes: int,
            size: Any, preprocess: str, batch_size: int, address: str | None = None,
            workers: int | None = None, progress: Progress | None = None,
            gpus_per_worker: float | None = None, placement: dict[str, Any] | None = None) -> DatasetAccumulator:
    """Stream ``source`` through the model on a Ray cluster; the result equals the local engine's.

    Args:
        spec: a ``ModelSpec`` (``model``, ``weights``, ``input_shape``, ``trust``,
            ``preprocess``): each actor reopens the model with
            ``open_model(spec.model, **other fields)``.
        source: the listed data (:func:`~convlens.dataset.sources.open_source`).
        layers: the selected layers, as the driver's adapter lists them.
        k: examples kept per channel and ranking.
        classes: number of label classes (0: unlabelled).
        size: the input size the BatchRunner prepares every image to.
        preprocess: the preprocessing preset.
        batch_size: images per forward pass (and per Ray task).
        address: an existing cluster (``host:port``, ``ray://host:port`` or
            ``auto``); ``None``: the running Ray session of this process if
            there is one, else a local cluster started for the run and shut
            down after it.
        workers: model actors (each holds one model); default: the cluster's CPUs,
            or on GPUs its GPUs divided by ``gpus_per_worker`` (at most one per batch).
        progress: advanced by the images of each merged batch.
        gpus_per_worker: GPUs each actor reserves when the model runs on GPUs
            (the spec's device ``cuda``/``cuda:N``, or ``auto`` on a cluster with
            GPUs); default 1, fractions put several actors on one GPU. Ray then
            makes each actor's GPUs its only visible ones, and the actor opens
            the model on ``cuda`` (``auto`` stays ``auto``).
        placement: filled with where the actors ran: ``num_gpus`` (per actor),
            ``actors`` (each actor's device and Ray GPU ids) and ``note``.

    Returns:
        The merged accumulator: every record folded in (or listed as failed) once.

    Raises:
        MissingDependency: Ray is not installed.
        BadArgument: bad ``workers``/``batch_size``, or ``address`` cannot be reached.
        ConvlensError: what an actor raised (e.g. the model cannot be opened there).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgument(f"batch size must be a positive integer, not {batch_size!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise BadArgument(f"--workers must be a positive integer, not {workers!r}")
    kwargs = _spec_kwargs(spec)
    ray = _import_ray()
    started = _connect(ray, address, workers)
    try:
        return _run(ray, kwargs, source, layers, k=k, classes=classes, size=size,
                    preprocess=preprocess, batch_size=batch_size, workers=workers,
                    progress=progress or NullProgress(), gpus_per_worker=gpus_per_worker,
                    placement=placement if placement is not None else {})
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- the cluster


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, the [data] extra)
    except ImportError as e:
        raise MissingDependency(f"the Ray engine needs Ray with Ray Data ({e.name or e} is missing); "
                                f"{INSTALL_HINT}, or use --engine local") from None
    return ray


def _connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """Connect to or start a cluster; True when this call started it (the run shuts it down)."""
    if address is not None and address.strip().lower() not in ("auto", "local"):
        _reachable(address)
    if ray.is_initialized():
        return False  # this process's session (a notebook's, a test's): used as it is
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
             "runtime_env": _runtime_env()}
    # Ray's C++ core logs at ERROR level on success (an actor pool whose constructor arguments sit
    # in the object store, ray-project/ray#53727): one alarming line on a run that worked. Its log
    # level is read from the environment when the driver's core worker starts, and that start
    # announces the level on stderr, so the start runs with file descriptor 2 silenced; a failure
    # still comes back as an exception, which becomes convlens's own one-line error.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address is None:
        cpus = max(os.cpu_count() or 1, workers or 1)
        with native_stderr_silenced():
            ray.init(num_cpus=cpus, **quiet)
        return True
    box: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, **quiet)
        except BaseException as e:  # noqa: B036 - handed to the waiting thread as is
            box["error"] = e

    # ray.init has no timeout of its own: an address that answers but is not Ray's GCS waits
    # for minutes; a daemon thread bounds the wait (and does not keep the process alive).
    thread = threading.Thread(target=init, name="convlens-ray-init", daemon=True)
    with native_stderr_silenced():
        thread.start()
        thread.join(INIT_TIMEOUT)
    if thread.is_alive():
        raise BadArgument(f"--ray-address {address}: no Ray cluster answered within {INIT_TIMEOUT:.0f} s; "
                          "give the head node's address (ray start --head prints it) or leave "
                          "--ray-address out to start a local cluster")
    if "error" in box:
        raise BadArgument(f"--ray-address {address}: cannot join the Ray cluster "
                          f"({_first_line(box['error'])}); give the head node's address (ray start --head "
                          "prints it) or leave --ray-address out to start a local cluster") from None
    return False


def _reachable(address: str) -> None:
    """Raise one line unless ``address``'s host accepts a TCP connection within CONNECT_TIMEOUT."""
    text = address.strip()
    client = text.startswith("ray://")
    hostport = text.removeprefix("ray://").split("/", 1)[0]
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        host, port_text = hostport, "10001" if client else "6379"
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise BadArgument(f"--ray-address {address}: not an address; write host:port such as "
                          "10.0.0.5:6379, ray://host:10001 or auto") from None
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise BadArgument(f"--ray-address {address}: cannot reach {host}:{port} ({why}); start the "
                          "cluster (ray start --head), check the address, or leave --ray-address out "
                          "to start a local cluster") from None


def _runtime_env() -> dict[str, Any]:
    """The driver's settings every worker process needs (the Keras backend, the test hook)."""
    names = (*FORWARDED_ENV, FAIL_ONCE_ENV)
    return {"env_vars": {name: os.environ[name] for name in names if name in os.environ}}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------- one run


def _batches(records: Sequence[Record], batch_size: int) -> list[list[Record]]:
    """Consecutive batches in listing order: the same forward passes as the local engine."""
    return [list(records[i:i + batch_size]) for i in range(0, len(records), batch_size)]


def _encode_records(records: Sequence[Record]) -> str:
    return json.dumps([[r.id, r.name, r.path, r.row, r.label] for r in records])


def _decode_records(text: str) -> list[Record]:
    return [Record(int(i), str(name), str(path), int(row), int(label))
            for i, name, path, row, label in json.loads(text)]


def _encode_state(state: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **state)  # type: ignore[arg-type]  # numpy's stubs type **kwds as allow_pickle
    return buffer.getvalue()


def _decode_state(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def _spec_kwargs(spec: Any) -> dict[str, Any]:
    """``open_model`` arguments from a ModelSpec (a dataclass) or a mapping with ``model``."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        fields = dataclasses.asdict(spec)
    elif isinstance(spec, Mapping):
        fields = dict(spec)
    else:
        raise BadArgument("the Ray engine reopens the model in every worker and needs a model file or "
                          "name; open the Lens from a path or a zoo name, not an in-memory model")
    if not fields.get("model"):
        raise BadArgument("the Ray engine needs a model file or name to reopen in its workers; open the "
                          "Lens from a path or a zoo name, not an in-memory model")
    weights = fields.get("weights")
    if isinstance(weights, str) and weights.strip().lower() == "none":
        # Each actor would draw its own random weights: the batches would see different models.
        raise BadArgument("random weights (--weights none) would differ in every Ray worker; save them to "
                          "a file once (torch.save(model.state_dict(), 'w.pth') or model.save('m.keras')) "
                          "and give that file, or use --engine local")
    if "input_shape" in fields and fields["input_shape"] is not None:
        fields["input_shape"] = tuple(fields["input_shape"])
    return fields


class _BatchWorker:
    """One model actor: opens the model once, then turns batches of records into accumulator states."""

    def __init__(self, spec: dict[str, Any], source: Source, layers: list[tuple[int, str]], *, k: int,
                 classes: int, size: Any, preprocess: str) -> None:
        import ray

        from ..adapters import adapter_device, open_model
        from .engine import BatchRunner

        # A convlens error here (the model file missing on this node...) is kept and raised by
        # the first batch: Ray reports an actor that fails to start only as text, and restarts it.
        self.failed: ConvlensError | None = None
        self.where = ""
        try:
            options = dict(spec)
            adapter = open_model(options.pop("model"), **options)
            ids = ",".join(str(i) for i in ray.get_gpu_ids()) or "none"
            self.where = f"{adapter_device(adapter)} (Ray GPU ids {ids})"
            table = {info.index: info for info in adapter.layers()}
            chosen = []
            for index, name in layers:
                info = table.get(index)
                if info is None or info.name != name:
                    raise BadArgument(f"the model reopened in a Ray worker has no layer {name!r} at "
                                      f"{index}; give the workers the same model file")
                chosen.append(info)
            self.runner = BatchRunner(adapter, chosen, source, size=size, preprocess=preprocess, k=k,
                                      classes=classes)
        except ConvlensError as e:
            self.failed = e

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        indexes, states, errors = [], [], []
        for index, records in zip(batch["batch"], batch["records"]):
            _maybe_fail_once()
            state, error = b"", ""
            try:
                if self.failed is not None:
                    raise self.failed
                state = _encode_state(self.runner.run(_decode_records(str(records))).state())
            except ConvlensError as e:
                # Sent back as data: Ray hands the driver a user error as a UserCodeException
                # whose cause is lost, and the driver raises it again as convlens's own.
                error = f"{type(e).__name__}:{e}"
            indexes.append(int(index))
            states.append(state)
            errors.append(error)
        return {"batch": np.asarray(indexes, np.int64), "state": np.asarray(states, dtype=object),
                "error": np.asarray(errors, dtype=object),
                "where": np.asarray([self.where] * len(indexes), dtype=object)}


def _maybe_fail_once() -> None:
    """The test hook of FAIL_ONCE_ENV: exit the process once, as a killed worker does."""
    path = os.environ.get(FAIL_ONCE_ENV)
    if not path:
        return
    try:
        os.rename(path, path + ".fired")  # atomic: exactly one batch of one actor wins
    except OSError:
        return
    os._exit(1)


def _run(ray: Any, kwargs: dict[str, Any], source: Source, layers: Sequence[LayerInfo], *, k: int, classes: int,
         size: Any, preprocess: str, batch_size: int, workers: int | None,
         progress: Progress, gpus_per_worker: float | None = None,
         placement: dict[str, Any] | None = None) -> DatasetAccumulator:
    import ray.data

    batches = _batches(source.records, batch_size)
    total = DatasetAccumulator(layers, k, classes)
    if not batches:
        return total
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1)) or 1
    per, actor_device = gpu_plan(kwargs.get("device"), float(resources.get("GPU", 0)), gpus_per_worker, workers)
    kwargs = {**kwargs, "device": actor_device}
    default_pool = max(1, int(float(resources.get("GPU", 0)) / per + 1e-9)) if per else cpus
    pool = min(workers or default_pool, len(batches))
    placement = placement if placement is not None else {}
    placement["num_gpus"] = per
    # Each actor gets its share of the node's cores, and its framework is told so (Ray sets
    # OMP_NUM_THREADS from num_cpus; TensorFlow reads its own variables), so that 2 actors on
    # 2 cores do not each start 2 threads per operation.
    share = max(1, cpus // pool) if workers is None or workers <= cpus else 1
    threads = {"OMP_NUM_THREADS": str(share), "TF_NUM_INTRAOP_THREADS": str(share),
               "TF_NUM_INTEROP_THREADS": "1"}
    env = {**_runtime_env()["env_vars"], **threads}
    if per:  # actors sharing a GPU: TensorFlow must not take all of its memory
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    gpu_args = {"num_gpus": per} if per else {}
    rows = [{"batch": i, "records": _encode_records(chunk)} for i, chunk in enumerate(batches)]
    bare = dataclasses.replace(source, records=())  # the actors get their records per batch
    # One block per batch (up to MAX_BLOCKS): the pool hands out batches one by one, so an actor
    # that starts late, or a slow node, is not left with a queue of many batches.
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
    del rows  # Ray holds its own copy now
    with warnings.catch_warnings():
        # max_restarts / max_task_retries are only accepted as ray_remote_args, which Ray 2.5x
        # flags as deprecated without a named replacement yet.
        warnings.simplefilter("ignore")
        mapped = dataset.map_batches(
            _BatchWorker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=share,
            fn_constructor_kwargs={"spec": kwargs, "source": bare,
                                   "layers": [(info.index, info.name) for info in layers],
                                   "k": k, "classes": classes, "size": size, "preprocess": preprocess},
            runtime_env={"env_vars": env}, max_restarts=RETRIES, max_task_retries=RETRIES, **gpu_args)

    merger = _Merger(total, layers, batches, len(source.records))
    progress.start(len(source.records), f"dataset on Ray ({pool} model actor{'s' * (pool > 1)})")
    # Library code never prints: Ray Data's progress bars and execution logs are silenced for
    # this run only (a notebook's own Ray Data work keeps its settings).
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = (context.enable_progress_bars, context.print_on_execution_start, logger.level)
    context.enable_progress_bars = context.print_on_execution_start = False
    logger.setLevel(logging.ERROR)
    wheres: set[str] = set()
    try:
        for out in _iterate(mapped):
            wheres.update(str(w) for w in out.get("where", ()) if w)
            for index, blob, error in zip(out["batch"], out["state"], out["error"]):
                if error:
                    raise _convlens_error(str(error))
                if merger.add(int(index), bytes(blob)):
                    progress.advance(len(batches[int(index)]))
    finally:
        context.enable_progress_bars, context.print_on_execution_start, level = saved
        logger.setLevel(level)
        progress.finish()
    placement["actors"] = sorted(wheres)
    if per:
        placement["note"] = (f"the Ray engine ran {pool} model actor{'s' * (pool > 1)} with {per:g} GPU each, "
                             f"on {'; '.join(sorted(wheres)) or 'no device reported'}")
    missing = merger.missing()
    if missing:
        raise ConvlensError(f"the Ray run returned without {missing} of {len(batches)} batches; run it "
                            "again (or with --engine local)")
    return total


def gpu_plan(device: str | None, cluster_gpus: float, gpus_per_worker: float | None,
             workers: int | None) -> tuple[float, str | None]:
    """GPUs each model actor requests, and the device it opens the model on.

    ``cuda``/``cuda:N`` need GPUs in the cluster (each actor sees only the GPUs
    Ray gave it, so it opens the model on ``cuda``); ``auto`` uses them when
    the cluster has some (the actor's ``auto`` then finds its GPU); ``cpu`` and
    ``mps`` request none.

    Raises:
        BadArgument: GPUs asked for on a cluster without any, a bad share, a
            share without a GPU device, or more GPUs than the cluster has.
    """
    spec = device or "auto"
    if gpus_per_worker is not None and not (gpus_per_worker > 0 and (
            gpus_per_worker <= 1 or float(gpus_per_worker).is_integer())):
        raise BadArgument(f"--gpus-per-worker {gpus_per_worker}: give a fraction of one GPU (0.25, 0.5) or "
                          "a whole number")
    if spec.startswith("cuda") and cluster_gpus <= 0:
        raise BadArgument(f"--device {spec} with --engine ray: the Ray cluster has no GPUs; start its nodes "
                          "with GPUs (ray start --num-gpus N), or use --device cpu")
    if spec.startswith("cuda") or (spec == "auto" and cluster_gpus > 0):
        per = float(gpus_per_worker) if gpus_per_worker is not None else 1.0
        if per > cluster_gpus:
            raise BadArgument(f"--gpus-per-worker {per:g}: the Ray cluster has {cluster_gpus:g} GPUs; ask for "
                              "at most that many per actor")
        if workers is not None and workers * per > cluster_gpus + 1e-9:
            raise BadArgument(f"--workers {workers} x --gpus-per-worker {per:g} needs {workers * per:g} GPUs and "
                              f"the Ray cluster has {cluster_gpus:g}; use fewer workers or a smaller share")
        return per, ("auto" if spec == "auto" else "cuda")
    if gpus_per_worker is not None:
        why = "the Ray cluster has no GPUs" if spec == "auto" else f"--device {spec} runs without them"
        raise BadArgument(f"--gpus-per-worker asks for GPUs, but {why}; leave it out, or use --device cuda on a "
                          "cluster with GPUs")
    return 0.0, spec


class _Merger:
    """The driver's side: merges each batch's state once, however often Ray delivers it.

    Args:
        total: the run's accumulator (merged into).
        layers: the selected layers (to read states back).
        batches: the run's batches; a state's batch index points into it.
        records: number of records (ids are ``0..records-1``).
    """

    def __init__(self, total: DatasetAccumulator, layers: Sequence[LayerInfo],
                 batches: Sequence[Sequence[Record]], records: int) -> None:
        self.total, self.layers = total, list(layers)
        self.done = np.zeros(len(batches), bool)
        self.seen = np.zeros(records, bool)
        self.dropped = 0

    def add(self, index: int, blob: bytes) -> bool:
        """Merge one batch's ``np.savez`` state; False (and nothing merged) for a batch seen already."""
        if self.done[index]:
            self.dropped += 1
            return False
        part = DatasetAccumulator.from_state(self.layers, _decode_state(blob))
        ids = part.seen_ids()
        if self.seen[ids].any():
            # A record belongs to one batch only, so this one was merged under another index.
            self.dropped += 1
            return False
        self.total.merge(part)
        self.done[index] = True
        self.seen[ids] = True
        return True

    def missing(self) -> int:
        """Batches never merged."""
        return int((~self.done).sum())


def _iterate(mapped: Any) -> Any:
    """The mapped rows as they arrive; an error an actor raised comes back as convlens's own."""
    try:
        yield from mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    except ConvlensError:
        raise
    except Exception as e:
        cause = _convlens_cause(e)
        if cause is not None:
            raise cause from None
        raise


def _convlens_error(text: str) -> ConvlensError:
    """The convlens error an actor sent back as ``"ClassName:message"``, as its own class."""
    name, _, message = text.partition(":")
    kinds, todo = {}, [ConvlensError]
    while todo:
        kind = todo.pop()
        kinds[kind.__name__] = kind
        todo += kind.__subclasses__()
    return kinds.get(name, ConvlensError)(message)


def _convlens_cause(error: BaseException) -> ConvlensError | None:
    """The ConvlensError inside a Ray task error chain, if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConvlensError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None

