"""Properties of the ``convlens`` command: generated argument lists, run in-process.

Whatever the arguments (good and bad models, images, folders, option values,
in any order), ``convlens.cli.main(argv)`` ends with status 0 or 2: 0 with its
outputs written, 2 with one line ``convlens: error: ...`` on stderr. Nothing
else reaches stderr, and no exception escapes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from convlens.cli import main

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def files(tmp_path_factory, keras) -> dict[str, str]:
    """Tiny inputs of every sort, good and bad, built once."""
    root = tmp_path_factory.mktemp("cli_inputs")
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}

    def image(name: str, array: np.ndarray, **kw) -> None:
        paths[name] = root / name
        PIL.Image.fromarray(array).save(paths[name], **kw)

    image("rgb.png", (rng.random((12, 10, 3)) * 255).astype(np.uint8))
    image("gray.png", (rng.random((9, 7)) * 255).astype(np.uint8))
    image("one.png", np.zeros((1, 1, 3), np.uint8))
    image("alpha.png", (rng.random((6, 5, 4)) * 255).astype(np.uint8))
    frames = [PIL.Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    paths["anim.gif"] = root / "anim.gif"
    frames[0].save(paths["anim.gif"], save_all=True, append_images=frames[1:])
    paths["text.png"] = root / "text.png"
    paths["text.png"].write_text("not an image\n")
    paths["cut.png"] = root / "cut.png"
    paths["cut.png"].write_bytes(paths["rgb.png"].read_bytes()[:60])
    paths["folder"] = root / "folder"
    paths["folder"].mkdir()
    paths["file"] = root / "existing-file"
    paths["file"].write_text("x")
    paths["labels.txt"] = root / "labels.txt"
    paths["labels.txt"].write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    paths["fake.keras"] = root / "fake.keras"
    paths["fake.keras"].write_text("not a zip")
    L = keras.layers
    small = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            L.Conv2D(3, 3, name="c1"),
            L.MaxPooling2D(name="p1"),
            L.Conv2D(4, 1, name="c2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(2, name="d"),
        ]
    )
    paths["free.keras"] = root / "free.keras"
    small.save(paths["free.keras"])
    return {k: str(v) for k, v in paths.items()}


MODELS = [
    "demo",
    "free.keras",
    "fake.keras",
    "rgb.png",
    "folder",
    "missing.keras",
    "torchvision:nope",
    "keras:vgg16 --weights /nonexistent.h5",
    "no-such-model",
]
IMAGES = [
    "rgb.png",
    "gray.png",
    "one.png",
    "alpha.png",
    "anim.gif",
    "text.png",
    "cut.png",
    "folder",
    "missing.png",
    "free.keras",
]
LAYERS = [
    "conv",
    "pool",
    "all",
    "blocks",
    "dense",
    "conv,pool",
    "0",
    "-1",
    "1-3",
    "3-1",
    "99",
    "re:c",
    "re:[",
    "re:a{99999999999}",
    "c*",
    "nope",
    "",
    ",",
    " , ",
    "conv, dense",
    "act,norm,merge",
]


def _outs(tmp: Path) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            str(tmp / "out"),
            str(tmp / "deep" / "er" / "out"),
            "FILE",
            "FOLDER",
            "/proc/convlens-cannot-write/out",
            str(tmp / "out" / "report.html"),
        ]
    )


OPTION_VALUES: dict[str, st.SearchStrategy[str]] = {
    "--norm": st.sampled_from(["standardize", "minmax", "layer", "global", "nope"]),
    "--cmap": st.sampled_from(["viridis", "gray", "magma", "nope", ""]),
    "--max-channels": st.sampled_from(["all", "1", "3", "100", "0", "-1", "x"]),
    "--max-filters": st.sampled_from(["all", "1", "2", "0", "-1"]),
    "--max-inputs": st.sampled_from(["1", "3", "0"]),
    "--columns": st.sampled_from(["1", "2", "1000", "0", "x"]),
    "--tile-size": st.sampled_from(["1", "3", "4", "16", "0", "x"]),
    "--size": st.sampled_from(["8", "8x9", "28", "28x28", "0", "x", "1x1"]),
    "--preprocess": st.sampled_from(["unit", "caffe", "torch", "tf", "raw", "nope"]),
    "--max-pixels": st.sampled_from(["1", "50", "100000", "0"]),
    "--weights": st.sampled_from(["none", "/nonexistent.h5"]),
    "--input-shape": st.sampled_from(["28,28,1", "16,16,3", "0,0", "x", "28x28x1"]),
    "--sections": st.sampled_from(
        ["layers", "maps,stats", "nope", "", "inputs,predictions,filters"]
    ),
    "--labels": st.sampled_from(["labels.txt", "missing.txt", "rgb.png"]),
}
FLAGS = ["--numbers", "--json", "--channels", "--trust", "--help", "--bogus"]
COMMAND_OPTIONS = {
    "layers": ["--weights", "--input-shape"],
    "maps": [
        "--layers",
        "--out",
        "--norm",
        "--cmap",
        "--max-channels",
        "--columns",
        "--tile-size",
        "--size",
        "--preprocess",
        "--max-pixels",
        "--input-shape",
    ],
    "filters": ["--layers", "--out", "--cmap", "--max-filters", "--max-inputs"],
    "stats": ["--layers", "--size", "--preprocess", "--max-pixels", "--input-shape"],
    "report": [
        "--layers",
        "--out",
        "--sections",
        "--labels",
        "--norm",
        "--max-channels",
        "--tile-size",
        "--size",
        "--columns",
    ],
}
TAKES_IMAGES = {"maps", "stats", "report"}


@st.composite
def argvs(draw, tmp: Path, files: dict[str, str], commands=tuple(COMMAND_OPTIONS)) -> list[str]:
    command = draw(st.sampled_from(commands))
    model, *model_extra = draw(st.sampled_from(MODELS)).split()
    argv = [command, files.get(model, model), *model_extra]
    if command in TAKES_IMAGES:
        chosen = draw(st.lists(st.sampled_from(IMAGES), min_size=1, max_size=3))
        argv += [files.get(name, str(tmp / name)) for name in chosen]
    options: list[list[str]] = []
    for option in draw(
        st.lists(st.sampled_from(COMMAND_OPTIONS[command]), max_size=4, unique=True)
    ):
        if option == "--out":
            value = draw(_outs(tmp))
            value = {"FILE": files["file"], "FOLDER": files["folder"]}.get(value, value)
        elif option == "--layers":
            value = draw(st.sampled_from(LAYERS))
        else:
            value = draw(OPTION_VALUES[option])
            value = files.get(value, value)
        options.append([option, value])
    if (
        command in ("maps", "filters", "report")
        and not any(o[0] == "--out" for o in options)
        and draw(st.booleans())
    ):
        options.append(["--out", str(tmp / "out")])
    options += [[flag] for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))]
    order = draw(st.permutations(range(len(options))))
    return argv + [part for i in order for part in options[i]]


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (status, stdout, everything that reached stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stray_out, stray_err = io.StringIO(), io.StringIO()  # what bypassed the given streams
    with contextlib.redirect_stdout(stray_out), contextlib.redirect_stderr(stray_err):
        status = main(argv, stdout=out, stderr=err)  # returns, even for --help and usage errors
    native = capfd.readouterr()  # anything a framework wrote on file descriptors 1 and 2
    assert not stray_out.getvalue(), (argv, stray_out.getvalue())
    return status, out.getvalue() + native.out, err.getvalue() + stray_err.getvalue() + native.err


def check_run(argv: list[str], capfd) -> tuple[int, str]:
    status, stdout, stderr = run_cli(argv, capfd)
    assert status in (0, 2), (argv, status, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, (argv, stderr)
    # the CLI's own notes go to stderr (stdout holds results); any other line is a leak or an error
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith("convlens: error: "), (argv, stderr)
    else:
        assert not lines, (argv, stderr)  # no framework log or warning reaches the user
    return status, stdout


@pytest.fixture()
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_run")


@settings(max_examples=80)
@given(data=st.data())
@example(data=None)
def test_any_argument_list_ends_in_status_0_or_2(files, scratch, capfd, data):
    argv = (
        data.draw(argvs(scratch, files), label="argv")
        if data is not None
        else [
            "maps",
            "demo",
            files["rgb.png"],
            "--out",
            str(scratch / "out"),
            "--layers",
            "re:a{99999999999}",
        ]
    )
    shutil.rmtree(scratch / "out", ignore_errors=True)
    status, _ = check_run(argv, capfd)
    event(f"{argv[0]} ended with {status}")
    if status == 0 and argv[0] == "maps" and "--help" not in argv:
        out = Path(argv[argv.index("--out") + 1])
        index = json.loads((out / "index.json").read_text())
        assert all((out / entry["file"]).is_file() for entry in index["maps"])


@settings(max_examples=25)
@given(data=st.data())
def test_runs_on_good_inputs_succeed(files, scratch, capfd, data):
    """Only good models, images and values: every run ends in 0 and writes what it says."""
    command = data.draw(
        st.sampled_from(["layers", "maps", "filters", "stats", "report"]), label="command"
    )
    model = data.draw(st.sampled_from(["demo", files["free.keras"]]), label="model")
    argv = [command, model]
    if command in TAKES_IMAGES:
        argv += data.draw(
            st.lists(
                st.sampled_from(
                    [files[n] for n in ("rgb.png", "gray.png", "one.png", "alpha.png", "anim.gif")]
                ),
                min_size=1,
                max_size=3,
            ),
            label="images",
        )
    out = scratch / ("report.html" if command == "report" else "out")
    if command in ("maps", "filters", "report"):
        argv += ["--out", str(out)]
    if command in ("maps", "report"):
        argv += [
            "--norm",
            data.draw(st.sampled_from(["standardize", "minmax", "layer", "global"]), label="norm"),
            "--max-channels",
            data.draw(st.sampled_from(["all", "1", "5"]), label="max-channels"),
            "--tile-size",
            data.draw(st.sampled_from(["4", "7", "64"]), label="tile"),
        ]
    if command in ("maps", "stats", "report") and model != "demo":
        argv += ["--size", data.draw(st.sampled_from(["8", "13x21", "32"]), label="size")]
    status, stdout = check_run(argv, capfd)
    assert status == 0, argv
    if command == "maps":
        assert json.loads((out / "index.json").read_text())["maps"]
    elif command == "report":
        assert out.read_text().lstrip().lower().startswith("<!doctype html")
    elif command == "filters":
        assert json.loads((out / "index.json").read_text())["filters"]
    else:
        assert stdout.strip()
