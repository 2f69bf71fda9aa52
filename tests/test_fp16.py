"""fp16 storage emulated on the CPU (zoobook.backends.fp16), on tiny hand-built ONNX graphs:
every tensor rounded where it is produced, as numpy's float16 rounding of each op's fp32
result; overflow to inf; keep_dtype; the precision modes; the backend through the registry."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from zoobook.backends import backend_options, capabilities, get_backend
from zoobook.backends.fp16 import (
    MIXED_FP32_OPS,
    Fp16EmulationBackend,
    emulate_fp16,
    emulation_report,
)

from .onnx_graphs import F32, make_model


def r16(a) -> np.ndarray:
    """numpy's fp16 rounding of an fp32 value, back in fp32."""
    with np.errstate(over="ignore"):
        return np.asarray(a, F32).astype(np.float16).astype(F32)


def run(model, feeds, outputs=None):
    """Run on the CPU with every optimisation off; ``outputs`` may name intermediate tensors."""
    declared = [o.name for o in model.graph.output]
    if outputs and any(n not in declared for n in outputs):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in declared)
        model = copy
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def values():
    rng = np.random.default_rng(0)
    return {"x": rng.uniform(-4, 4, (3, 8)).astype(F32), "c1": rng.uniform(-2, 2, (8,)).astype(F32),
            "c2": rng.uniform(0.5, 3, (8,)).astype(F32), "c3": rng.uniform(-1, 1, (8,)).astype(F32),
            "W": rng.standard_normal((8, 5)).astype(F32), "b": rng.standard_normal((5,)).astype(F32)}


@pytest.fixture(scope="module")
def chain(values):
    """x -> Add c1 -> Mul c2 -> Sub c3 -> y: elementwise, so each step is one IEEE fp32 operation."""
    nodes = [helper.make_node("Add", ["x", "c1"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "c2"], ["m"], name="mul"),
             helper.make_node("Sub", ["m", "c3"], ["y"], name="sub")]
    return make_model(nodes, [("x", [3, 8])], [("y", [3, 8])], [(k, values[k]) for k in ("c1", "c2", "c3")])


def chain_expected(v) -> dict:
    x, c1, c2, c3 = (r16(v[k]) for k in ("x", "c1", "c2", "c3"))
    a = r16(x + c1)
    m = r16(a * c2)
    return {"a": a, "m": m, "y": r16(m - c3)}


def test_each_elementwise_op_is_rounded_exactly_as_numpy_rounds_its_fp32_result(chain, values):
    emulated = emulate_fp16(chain)
    onnx.checker.check_model(emulated)
    got = run(emulated, {"x": values["x"]}, ["a", "m", "y"])
    want = chain_expected(values)
    for name in ("a", "m", "y"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == np.float32
    plain = run(chain, {"x": values["x"]})["y"]
    assert not np.array_equal(plain, got["y"])  # the rounding is there (and not a no-op on these values)
    report = emulation_report(emulated)
    assert report["rounded_tensors"] == 3 and report["rounded_initializers"] == 3 and report["rounded_inputs"] == 1


def test_matmul_accumulates_in_fp32_and_rounds_its_output(values):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="bias")]
    model = make_model(nodes, [("x", [3, 8])], [("y", [3, 5])], [("W", values["W"]), ("b", values["b"])])
    got = run(emulate_fp16(model), {"x": values["x"]}, ["mm", "y"])
    exact = (r16(values["x"]).astype(np.float64) @ r16(values["W"]).astype(np.float64)).astype(F32)
    want = r16(exact)
    assert np.array_equal(r16(got["mm"]), got["mm"])  # stored in fp16
    # summation order may differ between ORT and numpy by an fp32 ulp: at most one fp16 step apart
    assert np.all(np.abs(got["mm"] - want) <= np.spacing(np.abs(want).astype(np.float16)).astype(F32))
    np.testing.assert_array_equal(got["y"], r16(got["mm"] + r16(values["b"])))


def test_values_beyond_fp16_range_become_inf_in_tensors_and_initializers():
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"], name="blow_up"),
             helper.make_node("Mul", ["x", "huge"], ["y2"], name="by_huge")]
    model = make_model(nodes, [("x", [4])], [("big", [4]), ("y2", [4])], [("k", [1000.0]), ("huge", [1e5])])
    emulated = emulate_fp16(model)
    huge = numpy_helper.to_array(next(i for i in emulated.graph.initializer if i.name == "huge"))
    assert np.isposinf(huge).all()
    x = np.array([60.0, 70.0, -70.0, 1.0], F32)
    got = run(emulated, {"x": x})
    np.testing.assert_array_equal(got["big"], [60000.0, np.inf, -np.inf, 1000.0])
    np.testing.assert_array_equal(got["y2"], [np.inf, np.inf, -np.inf, np.inf])
    assert np.isfinite(run(model, {"x": x})["big"]).all()  # fp32 holds them


def test_graph_inputs_and_initializers_are_rounded_on_entry():
    # 1 + 3*2^-12 is no fp16 value (it rounds to 1 + 2^-10); 3*2^-12 itself is one, so the
    # output's own rounding would keep the unrounded difference: only rounding on entry changes it
    odd = F32(1 + 3 * 2.0 ** -12)
    assert r16(odd) == F32(1 + 2.0 ** -10)
    model = make_model([helper.make_node("Sub", ["x", "one"], ["dx"], name="dx"),
                        helper.make_node("Sub", ["w", "x"], ["dw"], name="dw")],
                       [("x", [1])], [("dx", [1]), ("dw", [1])], [("one", [1.0]), ("w", [odd])])
    x = np.array([odd], F32)
    assert run(model, {"x": x})["dx"][0] == F32(3 * 2.0 ** -12)
    got = run(emulate_fp16(model), {"x": x})
    assert got["dx"][0] == F32(2.0 ** -10)  # x rounded on entry
    assert got["dw"][0] == 0.0  # w rounded like x
    w = numpy_helper.to_array(next(i for i in emulate_fp16(model).graph.initializer if i.name == "w"))
    assert w.dtype == np.float32 and w[0] == F32(1 + 2.0 ** -10)


@pytest.mark.parametrize("keep", [["Sub"], ["shift"], "Sub", "shift, other"])
def test_keep_dtype_keeps_an_op_type_or_a_node_name_in_fp32(keep):
    shift = F32(3 * 2.0 ** -12)
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"], name="scale"),
             helper.make_node("Sub", ["m", "s"], ["y"], name="shift")]
    model = make_model(nodes, [("x", [3])], [("y", [3])], [("k", [1.1]), ("s", [shift])])
    x = np.array([1.0, 3.0, 7.0], F32)
    emulated = emulate_fp16(model, keep_dtype=keep)
    got = run(emulated, {"x": x}, ["m", "y"])
    m = r16(r16(x) * r16(1.1))
    np.testing.assert_array_equal(got["m"], m)  # the Mul before it is rounded
    np.testing.assert_array_equal(got["y"], m - shift)  # the kept Sub: fp32 output, fp32 initializer
    assert not np.array_equal(got["y"], r16(m - shift))
    s = numpy_helper.to_array(next(i for i in emulated.graph.initializer if i.name == "s"))
    assert s[0] == shift
    assert emulation_report(emulated)["kept_nodes"] == ["shift"]


def test_an_initializer_shared_by_a_kept_and_a_rounded_node_is_both():
    odd = F32(1 + 3 * 2.0 ** -12)
    nodes = [helper.make_node("Mul", ["x", "w"], ["a"], name="rounded"),
             helper.make_node("Add", ["x", "w"], ["b"], name="kept")]
    model = make_model(nodes, [("x", [1])], [("a", [1]), ("b", [1])], [("w", [odd])])
    got = run(emulate_fp16(model, keep_dtype=["kept"]), {"x": np.array([0.0], F32)})
    assert got["b"][0] == odd  # fp32 weight, fp32 output (x = 0 is exact in fp16)
    assert run(emulate_fp16(model, keep_dtype=["kept"]), {"x": np.array([1.0], F32)})["a"][0] == r16(odd)


def test_allow_mix_precision_keeps_our_list_in_fp32(values):
    assert {"Softmax", "ReduceMean", "LayerNormalization", "Exp", "Log", "Pow", "Div", "Sqrt", "Erf"} <= MIXED_FP32_OPS
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=-1),
             helper.make_node("Add", ["p", "c1"], ["y"], name="add")]
    model = make_model(nodes, [("x", [3, 8])], [("y", [3, 8])], [("c1", values["c1"])])
    feeds = {"x": values["x"]}
    forced = run(emulate_fp16(model, precision_mode="force_fp16"), feeds, ["p"])["p"]
    mixed = run(emulate_fp16(model, precision_mode="allow_mix_precision"), feeds, ["p", "y"])
    assert np.array_equal(r16(forced), forced)
    assert not np.array_equal(r16(mixed["p"]), mixed["p"])  # Softmax's output left in fp32
    np.testing.assert_array_equal(mixed["y"], r16(mixed["p"] + r16(values["c1"])))


def test_must_keep_origin_dtype_is_the_identity(chain, values):
    emulated = emulate_fp16(chain, precision_mode="must_keep_origin_dtype")
    assert list(emulated.graph.node) == list(chain.graph.node)
    assert list(emulated.graph.initializer) == list(chain.graph.initializer)
    np.testing.assert_array_equal(run(emulated, {"x": values["x"]})["y"], run(chain, {"x": values["x"]})["y"])


def test_names_are_preserved_and_the_input_model_left_unchanged(chain):
    before = chain.SerializeToString()
    emulated = emulate_fp16(chain)
    assert chain.SerializeToString() == before
    original = {o for n in chain.graph.node for o in n.output}
    produced = {o for n in emulated.graph.node for o in n.output}
    assert original <= produced
    assert [(o.name, o.type.tensor_type.elem_type) for o in emulated.graph.output] == \
        [(o.name, TensorProto.FLOAT) for o in chain.graph.output]
    assert [i.name for i in emulated.graph.input] == [i.name for i in chain.graph.input]
    # each original name is now the output of the Cast back to fp32
    by_output = {o: n for n in emulated.graph.node for o in n.output}
    for name in original:
        assert by_output[name].op_type == "Cast"


def test_unknown_precision_mode_is_an_error_listing_the_choices(chain):
    with pytest.raises(ValueError, match="force_fp16.*allow_mix_precision.*must_keep_origin_dtype"):
        emulate_fp16(chain, precision_mode="allow_fp32_to_fp16")
    with pytest.raises(ValueError, match="choose one of"):
        Fp16EmulationBackend(precision_mode="fp8")


def test_the_backend_compiles_and_opens_through_the_registry_and_keeps_the_rounding(chain, values, tmp_path):
    info = capabilities("onnxruntime-fp16")
    assert (info.precision, info.compiles, info.runs_onnx, info.needs_device) == ("fp16", True, False, False)
    options = backend_options("onnxruntime-fp16", precision_mode="force_fp16", keep_dtype="Softmax,ReduceMean",
                              threads=1, soc_version="Ascend310P3", ort_optimization="all")
    assert options == {"precision_mode": "force_fp16", "keep_dtype": "Softmax,ReduceMean", "threads": 1}
    backend = get_backend("onnxruntime-fp16", **options)
    assert backend.keep_dtype == ["Softmax", "ReduceMean"]
    source = tmp_path / "chain.onnx"
    onnx.save(chain, source)
    artifact = backend.compile(source, tmp_path / "out", input_shapes={"x": [3, 8]}, name="chain")
    assert artifact.name == "chain.fp16.onnx"
    onnx.checker.check_model(str(artifact))
    record = json.loads((tmp_path / "out" / "chain.fp16.json").read_text())
    assert record["rounded_tensors"] == 3 and record["rounded_initializers"] == 3
    assert record["precision_mode"] == "force_fp16" and record["kept_nodes"] == []
    with backend.open(artifact) as session:
        assert session.backend == "onnxruntime-fp16"
        assert session._session.get_session_options().graph_optimization_level == \
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        out = session.run({"x": values["x"]})
    # fails if any Cast pair were optimised away: each step must be rounded as numpy rounds it
    np.testing.assert_array_equal(out["y"], chain_expected(values)["y"])
    assert not np.array_equal(out["y"], run(chain, {"x": values["x"]})["y"])
    device = backend.device()
    assert device["kind"] == "cpu" and "not an NPU" in device["emulates"] and device["backend"] == "onnxruntime-fp16"
    with pytest.raises(ValueError, match="not an fp16-emulated graph"):
        backend.open(source)


def test_subgraph_nodes_are_left_unrounded_and_counted():
    odd = F32(1 + 3 * 2.0 ** -12)
    then_graph = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["t"], name="inner_sub")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner_id")], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Sub", ["x", "one"], ["d"], name="outer_sub"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[numpy_helper.from_array(np.array([1.0], F32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    emulated = emulate_fp16(model)
    onnx.checker.check_model(emulated)
    assert emulation_report(emulated)["subgraph_nodes_unrounded"] == 2
    got = run(emulated, {"x": np.array([odd], F32), "cond": np.array(True)})
    assert got["d"][0] == F32(2.0 ** -10)  # outer: x rounded on entry
    # the branch reads the outer x as the graph gives it (unrounded: its reader is inside the
    # subgraph), computes in fp32, and the If's own output is rounded where it leaves
    assert got["y"][0] == r16(odd - F32(1))
