"""Where the dataset view's images come from: a folder, a glob, a list file or Parquet.

:func:`open_source` lists a data set once, without decoding any image, into a
:class:`Source`: an immutable, deterministically ordered tuple of
:class:`Record` whose ``id`` is its position, so two runs (or the local and
the Ray engine) number the same images the same way. :func:`read_batch` then
decodes records through :mod:`convlens.images` (the same pixel limits and
errors as every other command); an image that cannot be read comes back as its
:class:`~convlens._errors.BadImage` instead of stopping the run.

What counts as an image file: a regular, non-hidden file whose extension is
one of :data:`IMAGE_EXTENSIONS` (case-insensitive). Hidden files and folders
(names starting with ``.``) are skipped, as file browsers and
``torchvision.datasets.ImageFolder`` do.

Kinds of DATA:

* **folder**: every image file below it (recursive), sorted by path. When no
  image lies directly in the folder and at least two of its first-level
  subfolders hold images (``DATA/<class>/.../<image>``, the ImageFolder
  layout), the subfolder names are the class names, sorted, and give labels.
  A single subfolder gives no labels: ``photos/2024/*.jpg`` is not one class.
  A folder holding no image file but ``.parquet`` files is read as Parquet.
* **glob**: a pattern with ``*``, ``?`` or ``[`` (``**`` recurses); image
  files matching it, sorted; unlabelled. One image file counts as a glob that
  matches itself.
* **list**: a UTF-8 text file of image paths, one a line, relative to the
  list's folder; blank lines and ``#`` comments ignored, repeats dropped; the
  file's order is kept (it is the user's, and deterministic).
* **parquet**: a ``.parquet`` file, or a folder of them (recursive, sorted),
  with a column of encoded image bytes: ``binary``/``large_binary`` (Ray
  Data's ``read_binary_files`` layout) or ``struct{bytes, path}`` (Hugging
  Face ``datasets``' ``Image`` feature; a row whose bytes are null is read
  from its path), or else of decoded pixel arrays as Ray Data writes them
  (``read_images(...).write_parquet(...)``: its tensor extension types, and
  Arrow's ``fixed_shape_tensor``; see :func:`_tensor_layout`). Labels come from a ``ClassLabel`` column named in the
  ``huggingface`` schema metadata (with its class names), or else an integer
  or string column named ``label``, ``labels``, ``class``, ``target`` or
  ``y``. Parquet is read by row group, never a whole file at once.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import BadArgument, BadImage
from ..images import Image, load_image, load_image_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_COLUMNS",
    "Record",
    "Source",
    "open_source",
    "read_batch",
    "read_original",
]

#: File extensions read as images (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
})

#: Column names taken as labels in Parquet files without Hugging Face metadata.
LABEL_COLUMNS = ("label", "labels", "class", "target", "y")

# Preferred image columns when a file has several binary columns.
_IMAGE_COLUMN_NAMES = ("image", "img", "bytes", "image_bytes", "jpg", "jpeg", "png")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_GLOB_CHARS = frozenset("*?[")
_KINDS_HINT = ("give a folder of images, a glob such as 'photos/**/*.jpg', a text file listing "
               "image paths, or a Parquet file or folder")


@dataclass(frozen=True, slots=True)
class Record:
    """One image of a data set (nothing decoded).

    Attributes:
        id: position in the sorted listing: stable across runs and engines.
        name: for people and files: the path relative to the data root, or
            ``"<file.parquet>#<row>"`` (the parquet file relative to the root).
        path: the image file, or the parquet file (absolute).
        row: the row in the parquet file; -1 for image files.
        label: class index into :attr:`Source.class_names`; -1 unlabelled.
    """

    id: int
    name: str
    path: str
    row: int = -1
    label: int = -1


@dataclass(frozen=True)
class Source:
    """A listed data set.

    Attributes:
        description: for people, e.g. ``"folder data/ (5,000 images, 10 classes)"``.
        kind: ``"folder"``, ``"glob"``, ``"list"`` or ``"parquet"``.
        root: what names are relative to: the folder, the glob's fixed
            prefix, the list file's folder, or the parquet file's folder / the
            parquet folder (absolute).
        records: every image, ``records[i].id == i``.
        class_names: names of the label indices, or ``None`` without labels.
        image_column: the parquet column of image bytes (parquet only).
        label_column: the parquet column of labels, if any (parquet only).
        notes: sentences about what was skipped (hidden files, other files,
            repeated list entries, labels out of range).
    """

    description: str
    kind: str
    root: str
    records: tuple[Record, ...]
    class_names: tuple[str, ...] | None
    image_column: str | None = None
    label_column: str | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labelled(self) -> bool:
        """True when records carry labels (:attr:`class_names` is set)."""
        return self.class_names is not None


# --------------------------------------------------------------------------- opening


def open_source(data: str | os.PathLike[str]) -> Source:
    """List a data set: a folder, a glob, a text file of paths, or Parquet.

    Nothing is decoded here; unreadable images are found by :func:`read_batch`.

    Args:
        data: the folder, pattern, list file, parquet file or parquet folder
            (``~`` expanded). See the module docstring for each kind's rules.

    Returns:
        The :class:`Source`, records in their deterministic order.

    Raises:
        BadArgument: ``data`` does not exist, holds no image, is a file that is
            neither Parquet, an image nor a text list, or a Parquet file has no
            image column (the message names the columns it has).
    """
    if not isinstance(data, (str, os.PathLike)):
        raise BadArgument(f"DATA must be a path or a glob pattern, not a {type(data).__name__}; "
                          f"{_KINDS_HINT}")
    text = os.fspath(data)
    if not text.strip():
        raise BadArgument(f"DATA is empty; {_KINDS_HINT}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _open_folder(path, text)
    if path.is_file():
        if path.suffix.lower() in _PARQUET_SUFFIXES:
            return _open_parquet([path.resolve()], path.resolve().parent, text)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return _from_files([path.resolve()], path.resolve().parent, "glob", text, ())
        return _open_list(path, text)
    if _GLOB_CHARS & set(text):
        return _open_glob(path, text)
    hint = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
    raise BadArgument(f"DATA {text} not found{hint}; check the path, or {_KINDS_HINT}")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: Path) -> tuple[list[Path], list[Path], int, int]:
    """Image files, parquet files, hidden entries skipped and other files, below ``root``."""
    images: list[Path] = []
    parquets: list[Path] = []
    hidden = others = 0
    for folder, dirs, files in os.walk(root):
        kept = [d for d in dirs if not _is_hidden(d)]
        hidden += len(dirs) - len(kept)
        dirs[:] = kept  # os.walk descends only into what is left
        for name in files:
            if _is_hidden(name):
                hidden += 1
            elif _is_image_name(name):
                images.append(Path(folder, name))
            elif name.lower().endswith(_PARQUET_SUFFIXES):
                parquets.append(Path(folder, name))
            else:
                others += 1
    return images, parquets, hidden, others


def _sort_key(path: Path, root: Path) -> tuple[str, ...]:
    # Component-wise: "a/b.png" before "a-b/c.png" whatever the separator's code point.
    return path.relative_to(root).parts


def _open_folder(path: Path, shown: str) -> Source:
    root = path.resolve()
    images, parquets, hidden, others = _walk(root)
    if not images and parquets:
        parquets.sort(key=lambda p: _sort_key(p, root))
        return _open_parquet(parquets, root, shown)
    if not images:
        found = []
        if others:
            found.append(f"{others:,} other file{'s' if others != 1 else ''}")
        if hidden:
            found.append(f"{hidden:,} hidden")
        what = f" (it has {' and '.join(found)})" if found else " (it is empty)"
        raise BadArgument(
            f"{shown} holds no image file{what}; put images ({_extensions()}) in it, or "
            f"{_KINDS_HINT}"
        )
    images.sort(key=lambda p: _sort_key(p, root))
    notes = _skipped_notes(hidden, others + len(parquets))
    labels: list[int] | None = None
    class_names: tuple[str, ...] | None = None
    firsts = [p.relative_to(root).parts for p in images]
    if all(len(parts) >= 2 for parts in firsts):
        classes = sorted({parts[0] for parts in firsts})
        if len(classes) >= 2:
            class_names = tuple(classes)
            position = {c: i for i, c in enumerate(classes)}
            labels = [position[parts[0]] for parts in firsts]
    return _from_files(images, root, "folder", shown, notes, labels=labels,
                       class_names=class_names)


def _skipped_notes(hidden: int, others: int) -> tuple[str, ...]:
    notes = []
    if hidden:
        notes.append(f"skipped {hidden:,} hidden file{'s' if hidden != 1 else ''} or folder"
                     f"{'s' if hidden != 1 else ''} (names starting with '.')")
    if others:
        notes.append(f"skipped {others:,} file{'s' if others != 1 else ''} that "
                     f"{'is' if others == 1 else 'are'} not images ({_extensions()})")
    return tuple(notes)


def _extensions() -> str:
    return ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))


def _from_files(files: Sequence[Path], root: Path, kind: str, shown: str, notes: Sequence[str], *,
                labels: Sequence[int] | None = None,
                class_names: tuple[str, ...] | None = None,
                names: Sequence[str] | None = None) -> Source:
    records = tuple(
        Record(
            id=i,
            name=names[i] if names is not None else _relative_name(f, root),
            path=str(f),
            label=labels[i] if labels is not None else -1,
        )
        for i, f in enumerate(files)
    )
    n = len(records)
    parts = [f"{n:,} image{'s' if n != 1 else ''}"]
    if class_names is not None:
        parts.append(f"{len(class_names):,} class{'es' if len(class_names) != 1 else ''}")
    return Source(
        description=f"{kind} {shown} ({', '.join(parts)})",
        kind=kind,
        root=str(root),
        records=records,
        class_names=class_names,
        notes=tuple(notes),
    )


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _glob_root(pattern: str) -> Path:
    """The longest leading folder of ``pattern`` without glob characters."""
    fixed = []
    for part in Path(pattern).expanduser().parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _open_glob(path: Path, shown: str) -> Source:
    pattern = str(path)
    matches = [Path(m) for m in globlib.glob(pattern, recursive=True)]
    files = [m for m in matches if m.is_file()]
    images = [m.resolve() for m in files if _is_image_name(m.name)]
    if not images:
        others = len(files)
        folders = sum(1 for m in matches if m.is_dir())
        if others:
            what = f"matches {others:,} file{'s' if others != 1 else ''} but no image"
        elif folders:
            what = (f"matches {folders:,} folder{'s' if folders != 1 else ''} but no image file (to look "
                    f"inside folders, end the pattern with '**/*', or give the folder itself)")
        else:
            what = "matches nothing"
        raise BadArgument(f"the pattern {shown} {what}; check it (quote it so the shell does not "
                          f"expand it), the image extensions read are {_extensions()}")
    root = _glob_root(pattern).resolve()
    images = sorted(set(images), key=lambda p: _relative_name(p, root).split("/"))
    notes = _skipped_notes(0, len(files) - len(images))
    return _from_files(images, root, "glob", shown, notes)


def _open_list(path: Path, shown: str) -> Source:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadArgument(f"cannot read {shown}: {e.strerror or e}; check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadArgument(
            f"{shown} is neither an image ({_extensions()}), a Parquet file nor a UTF-8 text "
            f"list of image paths; {_KINDS_HINT}"
        ) from None
    root = path.resolve().parent
    files: list[Path] = []
    names: list[str] = []
    seen: set[Path] = set()
    repeated = 0
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = Path(entry).expanduser()
        full = target if target.is_absolute() else root / target
        full = Path(os.path.normpath(full))
        if full in seen:
            repeated += 1
            continue
        seen.add(full)
        files.append(full)
        names.append(_relative_name(full, root))
    if not files:
        raise BadArgument(f"the list {shown} names no image (only blank lines or # comments); "
                          "write one image path per line, relative to the list's folder")
    notes = ((f"skipped {repeated:,} repeated entr{'ies' if repeated != 1 else 'y'} of the list",)
             if repeated else ())
    return _from_files(files, root, "list", shown, notes, names=names)


# --------------------------------------------------------------------------- parquet


@dataclass(frozen=True)
class _Columns:
    image: str
    image_is_struct: bool
    label: str | None
    class_names: tuple[str, ...] | None  # from ClassLabel metadata
    label_is_string: bool


def _hf_features(schema: Any) -> dict[str, Any]:
    """The ``features`` of the Hugging Face ``datasets`` schema metadata, or ``{}``."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return {}
    try:
        info = json.loads(raw)
        features = info.get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def _is_binary(pa: Any, t: Any) -> bool:
    types = pa.types
    return bool(types.is_binary(t) or types.is_large_binary(t)
                or (hasattr(types, "is_binary_view") and types.is_binary_view(t))
                or types.is_fixed_size_binary(t))


def _struct_with_bytes(pa: Any, t: Any) -> bool:
    if not pa.types.is_struct(t):
        return False
    index = t.get_field_index("bytes")
    return index >= 0 and _is_binary(pa, t.field(index).type)


def _describe_columns(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema) or "none"


_RAY_FIXED = ("ray.data.arrow_tensor", "ray.data.arrow_tensor_v2")
_RAY_VARIABLE = "ray.data.arrow_variable_shaped_tensor"


def _tensor_layout(field: Any) -> tuple[str, tuple[int, ...] | None] | None:
    """``("fixed", shape)`` or ``("variable", None)`` for a column of decoded pixel arrays, else None.

    Ray Data writes arrays (``read_images`` then ``write_parquet``) as its own extension types:
    ``ray.data.arrow_tensor[_v2]`` (a list of values, the shape as JSON in the extension
    metadata) and ``ray.data.arrow_variable_shaped_tensor`` (``struct{data, shape}``); pyarrow's
    canonical ``arrow.fixed_shape_tensor`` is read too. Without Ray imported, pyarrow reads them as
    their storage with the extension in the field's metadata; with Ray imported (its engine), as
    extension types. Shapes pickled by Ray 2.49-2.54 are never unpickled: such a column is not read.
    """
    import pyarrow as pa

    t = field.type
    meta = field.metadata or {}
    if isinstance(t, pa.FixedShapeTensorType):
        if t.permutation is not None and list(t.permutation) != sorted(t.permutation):
            return None
        return "fixed", tuple(int(v) for v in t.shape)
    if isinstance(t, pa.ExtensionType):
        name = t.extension_name
        storage = t.storage_type
        try:
            raw: bytes | None = t.__arrow_ext_serialize__()
        except Exception:  # an extension that cannot say its parameters
            raw = None
    else:
        name = (meta.get(b"ARROW:extension:name") or b"").decode("utf-8", "replace")
        storage = t
        raw = meta.get(b"ARROW:extension:metadata")
    if name in _RAY_FIXED and (pa.types.is_list(storage) or pa.types.is_large_list(storage)):
        try:
            shape = json.loads(raw or b"")
        except ValueError:
            return None
        if isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape):
            return "fixed", tuple(shape)
        return None
    if name == _RAY_VARIABLE and pa.types.is_struct(storage) \
            and storage.get_field_index("data") >= 0 and storage.get_field_index("shape") >= 0:
        return "variable", None
    return None


def _find_columns(schema: Any, shown: str) -> _Columns:
    import pyarrow as pa

    features = _hf_features(schema)
    names = list(schema.names)

    def encoded(name: str) -> bool:
        t = schema.field(name).type
        return _is_binary(pa, t) or _struct_with_bytes(pa, t)

    def usable(name: str) -> bool:
        return encoded(name) or _tensor_layout(schema.field(name)) is not None

    image: str | None = None
    for name, feature in features.items():
        if isinstance(feature, dict) and feature.get("_type") == "Image" and name in names \
                and usable(name):
            image = name
            break
    if image is None:
        # Encoded bytes before decoded arrays: they are what the files were.
        candidates = [n for n in names if encoded(n)] + [n for n in names if not encoded(n) and usable(n)]
        preferred = [n for n in candidates if n.lower() in _IMAGE_COLUMN_NAMES]
        if preferred:
            image = sorted(preferred, key=lambda n: _IMAGE_COLUMN_NAMES.index(n.lower()))[0]
        elif candidates:
            image = candidates[0]
    if image is None:
        raise BadArgument(
            f"{shown} has no image column (its columns: {_describe_columns(schema)}); the dataset "
            "view needs a column of encoded image bytes (binary, or struct{bytes, path} as "
            "Hugging Face datasets write) or of pixel arrays as Ray Data writes them"
        )

    label: str | None = None
    class_names: tuple[str, ...] | None = None
    for name, feature in features.items():
        if (isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and name in names
                and pa.types.is_integer(schema.field(name).type)):
            label = name
            got = feature.get("names")
            if isinstance(got, list) and got:
                class_names = tuple(str(n) for n in got)
            break
    string_label = False
    if label is None:
        for wanted in LABEL_COLUMNS:
            match = [n for n in names if n.lower() == wanted and n != image]
            if not match:
                continue
            t = schema.field(match[0]).type
            if pa.types.is_integer(t):
                label = match[0]
                break
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                label, string_label = match[0], True
                break
    return _Columns(image, _struct_with_bytes(pa, schema.field(image).type), label, class_names,
                    string_label)


def _parquet_file(path: Path, shown: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow reports damage as ArrowInvalid, OSError...
        raise BadArgument(f"{shown} is not a Parquet file pyarrow can read ({type(e).__name__}: "
                          f"{e}); check the file, or {_KINDS_HINT}") from None


def _labels_of(file: Any, column: str) -> Iterator[Any]:
    """The label column's values, one row group at a time."""
    for group in range(file.num_row_groups):
        yield from file.read_row_group(group, columns=[column]).column(0).to_pylist()


def _open_parquet(files: Sequence[Path], root: Path, shown: str) -> Source:
    first = _parquet_file(files[0], _relative_name(files[0], root) if len(files) > 1 else shown)
    columns = _find_columns(first.schema_arrow, _relative_name(files[0], root)
                            if len(files) > 1 else shown)
    raw_labels: list[Any] = []
    counts: list[int] = []  # rows per file
    for path in files:
        name = _relative_name(path, root)
        pf = first if path == files[0] else _parquet_file(path, name)
        schema = pf.schema_arrow
        if columns.image not in schema.names:
            raise BadArgument(f"{name} has no column {columns.image!r} like {files[0].name} (its "
                              f"columns: {_describe_columns(schema)}); keep one data set per folder")
        n = pf.metadata.num_rows
        counts.append(n)
        if columns.label is not None:
            if columns.label in schema.names:
                raw_labels.extend(_labels_of(pf, columns.label))
            else:
                raw_labels.extend([None] * n)
    if not sum(counts):
        raise BadArgument(f"{shown} holds no rows; {_KINDS_HINT}")

    notes: list[str] = []
    labels: list[int] | None = None
    class_names = columns.class_names
    if columns.label is not None:
        if columns.label_is_string:
            class_names = tuple(sorted({v for v in raw_labels if isinstance(v, str)}))
            position = {c: i for i, c in enumerate(class_names)}
            labels = [position[v] if isinstance(v, str) else -1 for v in raw_labels]
        else:
            ints = [int(v) if v is not None else -1 for v in raw_labels]
            if class_names is None:
                top = max(ints, default=-1)
                class_names = tuple(str(i) for i in range(top + 1)) if top >= 0 else None
            count = len(class_names) if class_names is not None else 0
            outside = sum(1 for v in ints if v >= count or v < -1)
            if outside:
                notes.append(f"{outside:,} label{'s' if outside != 1 else ''} of column "
                             f"{columns.label!r} outside 0..{count - 1} taken as unlabelled")
            labels = [v if 0 <= v < count else -1 for v in ints]
        if class_names is not None and not class_names:
            class_names, labels = None, None

    many = len(files) > 1
    all_labels = labels if labels is not None else [-1] * sum(counts)
    built: list[Record] = []
    for path, n in zip(files, counts):
        # One path string per file, shared by its rows (a million rows, one string).
        full, prefix, first_id = str(path), _relative_name(path, root) if many else path.name, len(built)
        built.extend(Record(first_id + row, f"{prefix}#{row}", full, row, all_labels[first_id + row])
                     for row in range(n))
    records = tuple(built)
    n = len(records)
    parts = [f"{n:,} image{'s' if n != 1 else ''}", f"image column {columns.image!r}"]
    if many:
        parts.insert(0, f"{len(files):,} files")
    if class_names is not None:
        parts.append(f"{len(class_names):,} class{'es' if len(class_names) != 1 else ''} "
                     f"from {columns.label!r}")
    return Source(
        description=f"parquet {shown} ({', '.join(parts)})",
        kind="parquet",
        root=str(root),
        records=records,
        class_names=class_names,
        image_column=columns.image,
        label_column=columns.label if class_names is not None else None,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- reading


def read_batch(source: Source, records: Sequence[Record], *,
               max_pixels: int | None = None) -> list[Image | BadImage]:
    """Decode records, in order; an unreadable image is returned as its :class:`BadImage`.

    Parquet rows are read a row group at a time, only the image column, and
    each needed row group once per call, so memory is bounded by the largest
    row group, never a whole file.

    Args:
        source: the :class:`Source` the records belong to.
        records: records of ``source`` (any order, any subset).
        max_pixels: as for :func:`convlens.images.load_image`.

    Returns:
        One entry per record, in order: the :class:`~convlens.images.Image`
        (named by the record's name), or the :class:`BadImage` saying why it
        could not be read (the caller counts it; it is never raised).
    """
    out: list[Image | BadImage | None] = [None] * len(records)
    if source.kind != "parquet":
        for i, record in enumerate(records):
            out[i] = _read_file(record, max_pixels)
        return out  # type: ignore[return-value]
    by_file: OrderedDict[str, list[int]] = OrderedDict()
    for i, record in enumerate(records):
        by_file.setdefault(record.path, []).append(i)
    for path, positions in by_file.items():
        _read_parquet_rows(source, path, [records[i] for i in positions], positions, out, max_pixels)
    return out  # type: ignore[return-value]


def read_original(source: Source, record: Record, *, max_pixels: int | None = None) -> Image:
    """Decode one record (to cut crops from at the end of a run).

    Raises:
        BadImage: the image cannot be read.
    """
    got = read_batch(source, [record], max_pixels=max_pixels)[0]
    if isinstance(got, BadImage):
        raise got
    return got


def _read_file(record: Record, max_pixels: int | None) -> Image | BadImage:
    try:
        return load_image(record.path, name=record.name, max_pixels=max_pixels)
    except BadImage as e:
        return e


def _read_parquet_rows(source: Source, path: str, records: Sequence[Record], positions: Sequence[int],
                       out: list[Image | BadImage | None], max_pixels: int | None) -> None:

    column = source.image_column
    try:
        if column is None:
            raise BadImage(f"{path}: the source names no image column; open the data again")
        pf, starts, layout = _parquet_footer(path, column)
    except BadImage as e:
        for i in positions:
            out[i] = e
        return
    except Exception as e:  # a file replaced or damaged since open_source
        bad = BadImage(f"cannot read {path} ({type(e).__name__}: {e}); check the file")
        for i in positions:
            out[i] = bad
        return

    wanted: dict[int, list[tuple[int, Record]]] = {}
    for i, record in zip(positions, records):
        group = _group_of(starts, record.row)
        if group < 0:
            out[i] = BadImage(f"{record.name}: row {record.row} is not in {path} "
                              f"({starts[-1]:,} rows); open the data again")
            continue
        wanted.setdefault(group, []).append((i, record))
    for group in sorted(wanted):  # one row group in memory at a time
        try:
            cells = _row_group(pf, path, group, column)
        except Exception as e:
            bad = BadImage(f"cannot read row group {group} of {path} ({type(e).__name__}: {e}); "
                           "check the file")
            for i, _ in wanted[group]:
                out[i] = bad
            continue
        for i, record in wanted[group]:
            at = record.row - starts[group]
            if layout is not None:
                out[i] = _decode_tensor(cells, at, layout, record, max_pixels)
            else:
                out[i] = _decode_cell(cells[at].as_py(), record, path, max_pixels)
        del cells


# Each thread keeps the footer of the last parquet file it read and its last row group's image
# column: batches walk a file in order, so a row group of 1,000 rows read in batches of 32 is
# read once, not 32 times. Memory: one row group per reading thread. Keys carry the file's size
# and modification time, so a file replaced meanwhile is read again.
_LAST = threading.local()


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


def _parquet_footer(path: str, column: str) -> tuple[Any, list[int], tuple[str, tuple[int, ...] | None] | None]:
    """The open file, the first row of each row group (plus the total) and the column's tensor
    layout (None: encoded bytes), cached per thread."""
    import pyarrow.parquet as pq

    key = _file_key(path)
    cached = getattr(_LAST, "footer", None)
    if cached is not None and cached[0] == key:
        pf, starts = cached[1], cached[2]
    else:
        _LAST.footer = _LAST.group = None
        pf = pq.ParquetFile(path)
        starts = [0]
        for group in range(pf.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(group).num_rows)
        _LAST.footer = (key, pf, starts)
    schema = pf.schema_arrow
    if column not in schema.names:
        raise BadImage(f"{path} has no image column {column!r} any more; open the data again")
    return pf, starts, _tensor_layout(schema.field(column))


def _row_group(pf: Any, path: str, group: int, column: str) -> Any:
    """One row group's image column (a pyarrow array), cached per thread (see :data:`_LAST`)."""
    key = (_file_key(path), group, column)
    cached = getattr(_LAST, "group", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    _LAST.group = None  # drop the previous group before reading the next: one in memory
    cells = pf.read_row_group(group, columns=[column]).column(0).combine_chunks()
    _LAST.group = (key, cells)
    return cells


def _group_of(starts: Sequence[int], row: int) -> int:
    import bisect

    if row < 0 or row >= starts[-1]:
        return -1
    return bisect.bisect_right(starts, row) - 1


def _decode_tensor(cells: Any, at: int, layout: tuple[str, tuple[int, ...] | None], record: Record,
                   max_pixels: int | None) -> Image | BadImage:
    """One decoded pixel array of a tensor column, through the array rules of ``load_image``."""
    import numpy as np
    import pyarrow as pa

    try:
        if not cells.is_valid().to_numpy(zero_copy_only=False)[at]:
            raise BadImage(f"{record.name} has no image (a null cell); drop the row or fill it")
        storage = cells.storage if isinstance(cells, pa.ExtensionArray) else cells
        kind, shape = layout
        if kind == "variable":
            values = storage.field("data")[at].values.to_numpy(zero_copy_only=False)
            shape = tuple(int(v) for v in storage.field("shape")[at].as_py())
        else:
            values = storage[at].values.to_numpy(zero_copy_only=False)
        assert shape is not None  # fixed layouts carry theirs
        if int(np.prod(shape)) != values.size:
            raise BadImage(f"{record.name} holds {values.size:,} values, not the {shape} its column "
                           "says; write the data set again")
        return load_image(values.reshape(shape), name=record.name, max_pixels=max_pixels)
    except BadImage as e:
        return e


def _decode_cell(value: Any, record: Record, path: str, max_pixels: int | None) -> Image | BadImage:
    try:
        data = value
        if isinstance(value, dict):  # Hugging Face Image: {"bytes": ..., "path": ...}
            data = value.get("bytes")
            if data is None and value.get("path"):
                # datasets stores only the path for images it did not embed
                linked = Path(str(value["path"])).expanduser()
                if not linked.is_absolute():
                    linked = Path(path).parent / linked
                return load_image(linked, name=record.name, max_pixels=max_pixels)
        if data is None:
            raise BadImage(f"{record.name} has no image (a null cell); drop the row or fill it")
        return load_image_bytes(data, name=record.name, source=record.name, max_pixels=max_pixels)
    except BadImage as e:
        return e
