"""Models with several inputs: the choice of the image input and of the held values (no framework)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convlens import cli
from convlens._errors import BadArgument
from convlens.adapters import HeldInputs, InputSlot, read_input_files
from convlens.adapters._inputs import hold_inputs

IMAGE = InputSlot("image", (3, None, None), "float32")
SIZE = InputSlot("size", (2,), "int64")
OTHER = InputSlot("other", (3, None, None), "float32")


def test_one_input_gives_nothing_to_hold_and_refuses_extra_inputs():
    assert hold_inputs("net", [IMAGE]) is None
    assert hold_inputs("net", [IMAGE], image_input="image") is None
    with pytest.raises(BadArgument, match="takes one input"):
        hold_inputs("net", [IMAGE], inputs={"size": np.zeros(2)})
    with pytest.raises(BadArgument, match="--image-input x: net takes one input"):
        hold_inputs("net", [IMAGE], image_input="x")


def test_the_image_is_the_first_image_like_input_and_the_others_are_zeros_with_a_note():
    held = hold_inputs("net", [SIZE, IMAGE])
    assert isinstance(held, HeldInputs)
    assert held.image == 1 and held.image_slot is IMAGE
    assert held.values["size"].dtype == np.int64 and held.values["size"].tolist() == [0, 0]
    assert any("held at zeros: size (2,) int64" in n and "--input" in n for n in held.notes)
    x = np.ones((4, 3, 8, 8), np.float32)
    args = held.arguments(x, 4)
    assert args[1] is x and args[0].shape == (4, 2)
    assert list(held.named(x, 4)) == ["size", "image"]
    assert held.summary() == "inputs: size (2,) int64 = held; image (3, ?, ?) float32 = the image"


def test_given_values_drop_a_batch_of_one_and_take_the_slot_dtype():
    held = hold_inputs("net", [IMAGE, SIZE], inputs={"size": np.array([[32.0, 48.0]])})
    assert held is not None and not held.notes
    assert held.values["size"].dtype == np.int64 and held.values["size"].tolist() == [32, 48]
    assert held.batched("size", 3).tolist() == [[32, 48]] * 3


def test_two_image_inputs_explain_the_first_or_the_named_one():
    held = hold_inputs("siamese", [IMAGE, OTHER], inputs={"other": np.zeros((3, 5, 5))})
    assert held is not None and held.image == 0
    assert any("2 image inputs" in n and "--image-input" in n for n in held.notes)
    with pytest.raises(BadArgument, match="free dimensions"):
        hold_inputs("siamese", [IMAGE, OTHER], image_input="image")
    held = hold_inputs("siamese", [IMAGE, OTHER], image_input="other", inputs={"image": np.zeros((3, 5, 5))})
    assert held is not None and held.image == 1


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"image_input": "nope"}, "--image-input nope: net has no such input; its inputs are image"),
    ({"inputs": {"nope": np.zeros(2)}}, "--input nope: net has no such input"),
    ({"inputs": {"image": np.zeros((3, 4, 4))}}, "is the image input"),
    ({"inputs": {"size": np.zeros(3)}}, "the array has shape (3,), but net takes size (2,) int64"),
    ({"inputs": {"size": np.array([0.5, 1.0])}}, "holds fractions"),
    ({"inputs": {"size": np.array(["a", "b"])}}, "give numbers"),
])
def test_bad_inputs_say_what_to_do(kwargs, needle):
    with pytest.raises(BadArgument) as err:
        hold_inputs("net", [IMAGE, SIZE], **kwargs)
    assert needle in str(err.value)


def test_an_undeclared_shape_must_be_given():
    with pytest.raises(BadArgument, match="does not declare its shape.*--input mask=FILE.npy"):
        hold_inputs("Net", [InputSlot("x"), InputSlot("mask")])
    held = hold_inputs("Net", [InputSlot("x"), InputSlot("mask")], inputs={"mask": np.ones((1, 4))})
    assert held is not None and held.values["mask"].shape == (1, 4)  # undeclared: taken as one item


def test_input_files_are_npy_arrays_and_never_pickles(tmp_path):
    good = tmp_path / "size.npy"
    np.save(good, np.array([32, 48]))
    assert read_input_files([f"size={good}"])["size"].tolist() == [32, 48]
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadArgument, match="does not unpickle"):
        read_input_files([f"x={pickled}"])
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    with pytest.raises(BadArgument, match="not a .npy array"):
        read_input_files([f"x={text}"])
    for bad, needle in [("size", "give NAME=FILE.npy"), (f"size={tmp_path / 'missing.npy'}", "is not a file"),
                        (f"a={good}", None)]:
        if needle is None:
            with pytest.raises(BadArgument, match="given twice"):
                read_input_files([bad, bad])
        else:
            with pytest.raises(BadArgument, match=needle):
                read_input_files([bad])


@pytest.mark.keras
def test_cli_input_on_a_one_input_model_is_one_line_and_exit_2(tmp_path):
    arr = tmp_path / "a.npy"
    np.save(arr, np.zeros(3))
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["layers", "demo", "--input", f"size={arr}"], stdout=out, stderr=err)
    assert code == 2 and out.getvalue() == ""
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "takes one input" in lines[0] and "--input is for models with several" in lines[0]


def _scaled_conv_onnx(path):
    """An ONNX file of two inputs: ``image`` (N, 3, 8, 8) and a scalar ``t`` that scales the conv's output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3) / 100, "W")
    nodes = [helper.make_node("Conv", ["image", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "t"], ["y"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("t", TensorProto.FLOAT, [])]
    graph = helper.make_graph(nodes, "scaled", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_model_spec_reopens_the_model_with_its_held_inputs_in_another_process(tmp_path):
    """The Ray engine's actors reopen the model from its spec: the held values travel with it (pickled by
    Ray as numpy arrays, convlens's own data), and the reopened model runs with them."""
    import pickle

    from convlens.model import Model, ModelSpec

    path = tmp_path / "scaled.onnx"
    _scaled_conv_onnx(path)
    model = Model.open(path, inputs={"t": np.float32(3.0)}, device="cpu")
    assert model.held_inputs is not None and float(model.held_inputs.values["t"]) == 3.0
    assert not model.held_inputs.slots[1].batch  # a scalar is fed once per call, never batched
    spec = pickle.loads(pickle.dumps(model.spec))
    assert isinstance(spec, ModelSpec) and dict(spec.inputs)["t"] == 3.0
    again = Model.open(**spec.kwargs())
    x = np.ones((2, 8, 8, 3), np.float32)
    a, b = model.adapter.run(x, [], lambda *_: None), again.adapter.run(x, [], lambda *_: None)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    zero = Model.open(path, device="cpu")  # not given: held at zeros, and said
    assert any("held at zeros: t () float32" in n for n in zero.input_notes)
    np.testing.assert_allclose(zero.adapter.run(x, [], lambda *_: None), 0.0, atol=0)
    np.testing.assert_allclose(a, 3.0 * Model.open(path, inputs={"t": np.float32(1.0)}).adapter.run(
        x, [], lambda *_: None), rtol=1e-5)
