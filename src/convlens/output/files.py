"""Writing files: every write is atomic.

* :class:`OutputDir` makes a run's folder of outputs appear all at once or
  not at all (``maps``, ``filters``, the demo), and runs that write the same
  folder at once commit one after the other.
* :func:`atomic_write_bytes` writes one file so that readers see the old
  content or the new, never half (the report page).
* :func:`check_file_target` refuses a folder where a file is wanted, before any work.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

try:  # commits into one folder are serialised between processes with flock (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows: commits are not serialised between processes
    fcntl = None  # type: ignore[assignment]

import numpy as np

from .._errors import BadArgument, OutputError
from ..render.png import encode_png
from .index import dumps_json

__all__ = ["OutputDir", "atomic_write_bytes", "check_file_target"]

if TYPE_CHECKING:  # pragma: no cover - annotations only (typing.Self needs Python 3.11)
    from typing_extensions import Self


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write one file so that readers see the old content or the new, never half.

    The bytes go to a temporary file in the same folder, then replace ``path``
    in one rename. Missing parent folders are created.

    Raises:
        OutputError: the file or its folder cannot be written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(f"{target} is a folder")
        tmp = target.with_name(f".{target.name}.convlens-tmp-{secrets.token_hex(4)}")
        try:
            _write_new(tmp, data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OutputError(f"cannot write {target}: {_reason(e, target)}{_NOTHING_WRITTEN}") from e


def _write_new(path: Path, data: bytes) -> None:
    # os.open with 0o666 lets the umask decide permissions (mkstemp would force 0600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class OutputDir:
    """An output folder written as one transaction.

    Files are written into a hidden staging folder next to ``path`` (same
    filesystem, so moving them is a rename) and only appear in ``path`` when
    the ``with`` block ends normally. If it raises, the staging folder is
    removed and ``path`` is left exactly as it was: a failed run leaves no
    partial output. Writing into an existing folder keeps its other files;
    files with the same names are replaced.

    ``write_*`` methods may be called from several threads at once.

    Two runs (threads or processes) that commit into the same folder at once
    take turns: the commit holds an exclusive ``flock`` on the parent folder,
    so the result is one run's files over the other's, never a mix of both
    runs' versions of the same files. A file staged with
    :meth:`write_json_on_commit` is made under that lock, so an index that
    merges the folder's previous index sees the other run's files. A commit
    that fails half way (a full disk) puts back what it had replaced.

    Example::

        with OutputDir("out") as out:
            out.write_png("maps/cat/001_conv.png", rgb)
            out.write_json("index.json", index)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self._shown = os.fspath(path)
        self._staging: Path | None = None
        self._written: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._on_commit: dict[str, Callable[[], Any]] = {}
        #: What :meth:`write_json_on_commit`'s functions returned, by relative path, once committed.
        self.results: dict[str, Any] = {}

    @property
    def written(self) -> list[str]:
        """Relative paths written so far, in the order of their first write."""
        with self._lock:
            return list(self._written)

    def __enter__(self) -> Self:
        target = self.path
        if target.exists() and not target.is_dir():
            self._fail("it is a file, not a folder")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._fail(_reason(e, target.parent), e)
        if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
            self._fail("permission denied")
        try:
            self._staging = _make_dir(target.parent, f".{target.name}.convlens-tmp-")
        except OSError as e:
            if not target.is_dir():
                self._fail(_reason(e, target.parent), e)
            try:  # the parent is read-only but the folder itself is writable: stage inside it
                self._staging = _make_dir(target, ".convlens-tmp-")
            except OSError as e2:
                self._fail(_reason(e2, target), e2)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        staging, self._staging = self._staging, None
        if staging is None:
            return
        if exc_type is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        try:
            with _commit_lock(self.path.parent):
                for key, make in self._on_commit.items():
                    self.results[key] = obj = make()
                    self._stage(staging, key, _json_bytes(obj))
                self._commit(staging)
        except OSError as e:
            raise OutputError(f"cannot write to {self._shown}: {_reason(e, self.path)}"
                              f"{_NOTHING_WRITTEN}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def write_bytes(self, rel: str | os.PathLike[str], data: bytes) -> None:
        """Stage one file.

        Args:
            rel: path relative to the output folder, ``/``-separated, e.g.
                ``maps/cat/001_conv.png``; no absolute paths, no ``..``.
            data: the file's content.
        """
        key = _relative(rel)
        staging = self._staging
        if staging is None:
            raise OutputError("OutputDir is not open; write inside its 'with' block")
        self._stage(staging, key, data)

    def _stage(self, staging: Path, key: str, data: bytes) -> None:
        dest = staging.joinpath(*key.split("/"))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
        except OSError as e:
            raise OutputError(f"cannot write {key} to {self._shown}: {_reason(e, dest)}"
                              f"{_NOTHING_WRITTEN}") from e
        with self._lock:
            if key not in self._seen:
                self._seen.add(key)
                self._written.append(key)

    def write_png(self, rel: str | os.PathLike[str], rgb: np.ndarray, *,
                  compress_level: int = 1, palette: np.ndarray | None = None) -> None:
        """Encode ``(H, W, 3)`` uint8 RGB (or indices with ``palette``) with :func:`encode_png`; stage it."""
        self.write_bytes(rel, encode_png(rgb, compress_level=compress_level, palette=palette))

    def write_text(self, rel: str | os.PathLike[str], text: str) -> None:
        """Stage a UTF-8 text file."""
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str | os.PathLike[str], obj: Any) -> None:
        """Stage ``obj`` as indented JSON (keys in insertion order).

        numpy scalars and arrays become numbers and lists, paths become
        strings, and NaN or infinite floats become ``null`` so browsers can
        parse the file.
        """
        self.write_bytes(rel, _json_bytes(obj))

    def write_json_on_commit(self, rel: str | os.PathLike[str], make: Callable[[], Any]) -> None:
        """Stage a JSON file whose content ``make()`` returns at commit time, under the commit lock.

        For an index that merges the one already in the folder: made at
        commit time, it sees what another run committed meanwhile. The
        object is kept in :attr:`results` under ``rel``.
        """
        key = _relative(rel)
        with self._lock:
            self._on_commit[key] = make

    def _commit(self, staging: Path) -> None:
        target = self.path
        if not target.exists():
            try:
                os.replace(staging, target)  # the whole output appears in one rename
                return
            except OSError:
                if not target.is_dir():  # something else appeared there meanwhile
                    raise
        keys = self.written
        for key in keys:  # check everything first, so a conflict moves nothing
            _check_free(target, key)
        # Files the folder already has are set aside (in the staging folder) rather than
        # overwritten, so that a failure half way can put everything back.
        old = staging / ".convlens-replaced"
        done: list[tuple[str, bool]] = []  # (key, an old file was set aside)
        made: list[Path] = []  # folders created in the target, deepest last
        try:
            for key in keys:
                parts = key.split("/")
                dest = target.joinpath(*parts)
                for depth in range(1, len(parts)):
                    folder = target.joinpath(*parts[:depth])
                    if not folder.is_dir():
                        folder.mkdir()
                        made.append(folder)
                replaced = dest.exists()
                if replaced:
                    aside = old.joinpath(*parts)
                    aside.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dest, aside)
                done.append((key, replaced))
                os.replace(staging.joinpath(*parts), dest)
        except OSError:
            for key, replaced in reversed(done):
                parts = key.split("/")
                dest = target.joinpath(*parts)
                try:
                    if dest.exists():
                        os.replace(dest, staging.joinpath(*parts))
                    if replaced:
                        os.replace(old.joinpath(*parts), dest)
                except OSError:  # pragma: no cover - a rename back into place failed too
                    pass
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:  # pragma: no cover - not empty: something else wrote there
                    pass
            raise

    def _fail(self, reason: str, cause: BaseException | None = None) -> NoReturn:
        raise OutputError(f"cannot write to {self._shown}: {reason}; "
                          "choose another --out folder") from cause


#: How an error while writing ends: the transaction guarantees it.
_NOTHING_WRITTEN = "; nothing was written (choose another --out folder, or free some space)"


@contextmanager
def _commit_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` (the output's parent) while a commit runs.

    Held by one commit at a time across processes and threads (each takes
    its own open file description); commits are renames, so the wait is short.
    Where locks are unavailable (Windows, some network filesystems) commits
    simply run unlocked, as before.
    """
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _make_dir(parent: Path, prefix: str) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would become the output folder's mode.
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir(0o777)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free staging folder name in {parent}")  # pragma: no cover


def _relative(rel: str | os.PathLike[str]) -> str:
    """Validate a relative output path; returns it ``/``-separated."""
    text = os.fspath(rel)
    if not isinstance(text, str) or not text.strip():
        raise BadArgument(f"an output path must be a non-empty relative path, got {rel!r}")
    unified = text.replace("\\", "/")
    if PurePosixPath(unified).is_absolute() or PureWindowsPath(text).drive:
        raise BadArgument(f"output paths must be relative to the output folder, got {text!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise BadArgument(f"output paths must stay inside the output folder, got {text!r}")
    return "/".join(parts)


def _check_free(target: Path, key: str) -> None:
    here = target
    parts = key.split("/")
    for part in parts[:-1]:
        here = here / part
        if here.exists() and not here.is_dir():
            raise NotADirectoryError(f"{here} is a file, so {key} cannot be written")
    if (here / parts[-1]).is_dir():
        raise IsADirectoryError(f"{here / parts[-1]} is a folder, so {key} cannot be written")


def _reason(e: OSError, path: Path) -> str:
    """A short human reason for an OSError, naming a file that blocks a folder."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk is full ({e.strerror or 'no space left on device'})"
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    return e.strerror or str(e)


def _json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON (see :meth:`OutputDir.write_json`)."""
    return (dumps_json(obj) + "\n").encode("utf-8")


def check_file_target(path: str | os.PathLike[str], *, example: str = "report.html") -> Path:
    """The path of a single output file, refused at once when it is a folder.

    Call it before the work, so that a folder given as ``--out`` fails in no time.

    Raises:
        OutputError: ``path`` is a folder.
    """
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give the report a file name such as "
                          f"{target / example}")
    return target
