"""The per-operator divergence locator (zoobook.locate): a divergence planted at one operator is
found there; chunked dumps give the same rows; fp16 overflow is located where it happens; the
Ascend operator dump is read from a fake dump written here in the documented layout."""

from __future__ import annotations

import functools
import json
import struct

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from zoobook import locate as loc
from zoobook.backends.fp16 import emulate_fp16

from .onnx_graphs import F32, make_model

NAMES = ["mm", "bias", "act", "scale", "mm2", "out"]


def mlp(act: str = "Relu", scale: float = 0.5, **act_attrs):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm"),
             helper.make_node("Add", ["h1", "b1"], ["h2"], name="bias"),
             helper.make_node(act, ["h2"], ["h3"], name="act", **act_attrs),
             helper.make_node("Mul", ["h3", "s"], ["h4"], name="scale"),
             helper.make_node("MatMul", ["h4", "W2"], ["h5"], name="mm2"),
             helper.make_node("Add", ["h5", "b2"], ["y"], name="out")]
    inits = [("W1", rng.standard_normal((16, 12))), ("b1", rng.standard_normal(12)), ("s", [scale]),
             ("W2", rng.standard_normal((12, 6))), ("b2", rng.standard_normal(6))]
    return make_model(nodes, [("x", [4, 16])], [("y", [4, 6])], inits)


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(F32)}


def test_float_tensors_lists_operator_outputs_in_topological_order():
    model = mlp()
    order = loc.float_tensors(model)
    assert order == [("h1", "mm", "MatMul"), ("h2", "bias", "Add"), ("h3", "act", "Relu"), ("h4", "scale", "Mul"),
                     ("h5", "mm2", "MatMul"), ("y", "out", "Add")]
    shuffled = mlp()
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))  # not an order ONNX would run in
    assert loc.float_tensors(shuffled) == order


def test_float_tensors_skips_non_float_tensors():
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [2, 3])], [("y", [2, 3])])
    assert loc.float_tensors(model) == [("y", "relu", "Relu")]


@pytest.mark.parametrize("planted, where", [
    (functools.partial(mlp, scale=0.75), "scale"),  # one Mul's constant scaled by 1.5
    (functools.partial(mlp, act="LeakyRelu", alpha=0.5), "act"),  # Relu swapped for LeakyRelu
])
def test_a_divergence_planted_at_one_operator_is_located_there(feeds, planted, where):
    reference, candidate = mlp(), planted()
    order = loc.float_tensors(reference)
    rows = loc.locate(loc.dump_onnx(reference, feeds, order), loc.dump_onnx(candidate, feeds, order), order)
    assert [row["node"] for row in rows] == NAMES
    first = loc.first_divergence(rows)
    assert first["node"] == where and first["index"] == NAMES.index(where)
    assert all(row["passed"] for row in rows[:first["index"]])
    assert all(row["cosine"] > 0.999999 and row["max_abs"] == 0 for row in rows[:first["index"]])
    assert set(rows[0]) >= {"index", "node", "op_type", "tensor", "shape", "cosine", "max_abs", "max_rel", "finite",
                            "passed"}
    assert rows[first["index"]]["finite"]


def test_candidate_may_be_a_mapping_or_a_callable(feeds):
    reference, candidate = mlp(), mlp(scale=0.75)
    order = loc.float_tensors(reference)
    ref = dict(loc.dump_onnx(reference, feeds, order))
    cand = dict(loc.dump_onnx(candidate, feeds, order))
    by_mapping = loc.locate(ref, cand, order)
    by_callable = loc.locate(ref, cand.get, [name for name, _, _ in order])
    assert loc.first_divergence(by_mapping)["node"] == "scale"
    assert loc.first_divergence(by_callable)["tensor"] == "h4"
    partial = {k: v for k, v in cand.items() if k != "h2"}
    assert [row["tensor"] for row in loc.locate(ref, partial, order)] == ["h1", "h3", "h4", "h5", "y"]


def test_chunking_gives_the_same_rows_and_one_session_per_chunk(feeds, monkeypatch):
    model = mlp()
    order = loc.float_tensors(model)
    sessions = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        sessions.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    transform = functools.partial(emulate_fp16, precision_mode="force_fp16")
    one = loc.locate(loc.dump_onnx(model, feeds, order, chunk=1),
                     loc.dump_onnx(model, feeds, order, chunk=1, transform=transform), order)
    assert len(sessions) == 2 * len(order)
    sessions.clear()
    all_at_once = loc.locate(loc.dump_onnx(model, feeds, order, chunk=100),
                             loc.dump_onnx(model, feeds, order, chunk=100, transform=transform), order)
    assert len(sessions) == 2
    assert one == all_at_once
    dumped = loc.dump_onnx(model, feeds, order, chunk=4)
    assert next(dumped)[0] == "h1" and len(sessions) == 3  # lazily: the first chunk only
    assert [name for name, _ in dumped] == ["h2", "h3", "h4", "h5", "y"] and len(sessions) == 4


def _pairs(dump):
    return [(name, array.copy()) for name, array in dump]


def test_a_held_dump_runs_the_graph_once_for_several_candidates(feeds, monkeypatch):
    model = mlp()
    order = loc.float_tensors(model)
    fresh = _pairs(loc.dump_onnx(model, feeds, order, chunk=2))
    sessions = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: sessions.append(1) or real(*a, **k))
    held = loc.HeldDump(model, feeds, order, hold_bytes=1 << 20, chunk=2)
    first, again = _pairs(held), _pairs(held)
    assert held.dumps == 1 and len(sessions) == 3  # one session per chunk of the first read only
    for (name, array), (name1, a1), (name2, a2) in zip(fresh, first, again):
        assert name == name1 == name2 and np.array_equal(array, a1) and np.array_equal(array, a2)
    transform = functools.partial(emulate_fp16, precision_mode="force_fp16")
    rows = loc.locate_onnx(model, feeds, transform=transform, reference=held)
    assert rows == loc.locate_onnx(model, feeds, transform=transform) and held.dumps == 1


def test_a_dump_too_large_to_hold_or_read_in_part_is_dumped_again(feeds):
    model = mlp()
    order = loc.float_tensors(model)
    total = sum(array.nbytes for _, array in loc.dump_onnx(model, feeds, order))
    too_small = loc.HeldDump(model, feeds, order, hold_bytes=total - 1)
    assert [n for n, _ in too_small] == [n for n, _ in too_small] and too_small.dumps == 2
    fits = loc.HeldDump(model, feeds, order, hold_bytes=total)
    next(iter(fits))  # a read that stops early keeps nothing
    assert len(_pairs(fits)) == len(order) and fits.dumps == 2
    assert len(_pairs(fits)) == len(order) and fits.dumps == 2


def branchy():
    """x -> Split into a, b (one node, two outputs) -> a skip tensor ``a`` read again at the end, an
    If whose branches read ``b`` from the enclosing graph, and a dead end nobody asks for."""
    then = helper.make_graph([helper.make_node("Neg", ["b"], ["t"], name="then_neg")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Abs", ["b"], ["e"], name="else_abs")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=1),
             helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["positive"], name="sign"),
             helper.make_node("If", ["positive"], ["c"], name="branch", then_branch=then, else_branch=other),
             helper.make_node("Exp", ["a"], ["d"], name="exp"),
             helper.make_node("Mul", ["d", "c"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "a"], ["y"], name="skip"),
             helper.make_node("Sin", ["y"], ["dead"], name="dead_end")]
    return make_model(nodes, [("x", [2, 8])], [("y", [2, 4]), ("dead", [2, 4])], [("zero", 0.0)])


def test_dump_onnx_runs_each_node_once_in_segments_and_matches_one_full_run(monkeypatch):
    model = branchy()
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 8)).astype(F32)}
    wanted = ["a", "d", "b", "c", "m", "y"]  # Split's outputs fall in different chunks
    whole = onnx_full_run(model, feeds, wanted)
    ran = []
    real = ort.InferenceSession

    def recording(data, *args, **kwargs):
        import onnx

        ran.extend(node.name for node in onnx.load_from_string(data).graph.node)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    for chunk in (1, 2, 4, 100):
        ran.clear()
        got = list(loc.dump_onnx(model, feeds, wanted, chunk=chunk))
        assert [name for name, _ in got] == wanted
        for name, array in got:
            np.testing.assert_array_equal(array, whole[name], err_msg=f"{name} at chunk={chunk}")
        assert sorted(ran) == sorted(["split", "sum", "sign", "branch", "exp", "mul", "skip"]), chunk


def onnx_full_run(model, feeds, names):
    """Every one of ``names`` as an output of one run of the whole graph."""
    import onnx

    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(full.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("block", [7, 1 << 22])
def test_tensor_row_in_blocks_gives_compare_tensors_figures_over_the_finite_entries(monkeypatch, block):
    from zoobook.compare import compare_tensors

    monkeypatch.setattr(loc, "ROW_BLOCK", block)
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((3, 50)).astype(F32)
    ref[0, :5] = 1e-6  # below 1e-3 of the peak: no relative error is taken there
    cand = (ref + 1e-2 * rng.standard_normal(ref.shape)).astype(F32)
    cand[1, 3], cand[2, 7], ref[2, 9] = np.inf, np.nan, np.nan  # two the candidate lost, one nobody has
    row = loc.tensor_row(ref, cand)
    both = np.isfinite(ref) & np.isfinite(cand)
    expected = compare_tensors(ref[both], cand[both])
    for key in ("cosine", "max_abs", "max_rel", "rel_euclidean"):
        assert row[key] == pytest.approx(expected[key], rel=1e-12), key
    assert row["nonfinite"] == 2 and row["finite"] is False and row["passed"] is False
    same = loc.tensor_row(ref[:1], ref[:1].copy())
    assert same["cosine"] == pytest.approx(1.0) and same["max_abs"] == 0.0 and same["passed"]
    zeros = loc.tensor_row(np.zeros(10, F32), np.zeros(10, F32))
    assert zeros["cosine"] == 1.0 and zeros["rel_euclidean"] == 0.0 and zeros["passed"]
    assert loc.tensor_row(np.zeros(10, F32), np.ones(10, F32))["passed"] is False


def test_dump_onnx_yields_inputs_and_initializers_and_rejects_unknown_names(feeds):
    model = mlp()
    got = dict(loc.dump_onnx(model, feeds, ["x", "b1", "h2"]))
    np.testing.assert_array_equal(got["x"], feeds["x"])
    assert got["b1"].shape == (12,) and got["h2"].shape == (4, 12)
    with pytest.raises(KeyError, match="nowhere"):
        list(loc.dump_onnx(model, feeds, ["nowhere"]))


def test_fp16_overflow_is_located_at_the_operator_that_overflows():
    nodes = [helper.make_node("Add", ["x", "one"], ["pre"], name="pre"),
             helper.make_node("Mul", ["pre", "k"], ["big"], name="blow_up"),
             helper.make_node("Mul", ["big", "k_inv"], ["back"], name="scale_back"),
             helper.make_node("Relu", ["back"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [64])], [("y", [64])], [("one", [1.0]), ("k", [1000.0]), ("k_inv", [1e-3])])
    x = np.linspace(-100, 100, 64).astype(F32)
    rows = loc.locate_onnx(model, {"x": x}, transform=emulate_fp16, chunk=2)
    first = loc.first_divergence(rows)
    assert first["node"] == "blow_up" and first["op_type"] == "Mul"
    assert not first["finite"] and first["nonfinite"] > 0
    assert rows[0]["node"] == "pre" and rows[0]["passed"] and rows[0]["max_rel"] < 1e-3
    # kept in fp32 (ATC's keep_dtype), the same graph does not overflow
    kept = loc.locate_onnx(model, {"x": x}, transform=functools.partial(emulate_fp16, keep_dtype=["Mul"]))
    assert loc.first_divergence(kept) is None


def test_plot_cosine_draws_the_threshold_and_the_first_divergence(feeds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = loc.locate_onnx(mlp(), feeds, transform=lambda m: mlp(scale=0.75))
    fig = loc.plot_cosine(rows, title="planted")
    ax = fig.axes[0]
    assert ax.get_title() == "planted" and len(fig.axes) == 2
    assert any("first divergence: scale" in t.get_text() for t in ax.texts)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# a fake Ascend operator dump, written here in the documented layout (see zoobook.locate)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def pb_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def pb_shape(dims, packed: bool = True) -> bytes:
    if packed:
        return pb_bytes(1, b"".join(varint(d) for d in dims))
    return b"".join(pb_int(1, d) for d in dims)


DT_FLOAT, DT_FLOAT16 = 1, 2  # the dump schema's OutputDataType
FORMAT_NCHW, FORMAT_ND, FORMAT_NC1HWC0, FORMAT_FRACTAL_NZ = 0, 2, 3, 29


def entry(raw: bytes, dtype: int, fmt: int, shape, *, output: bool, original=None, original_shape=None,
          packed: bool = True) -> bytes:
    """An OpOutput (1 data_type, 2 format, 3 shape, 4 original_op, 6 size, 7 original_shape) or
    an OpInput (1, 2, 3, 5 size, 6 original_shape)."""
    body = pb_int(1, dtype) + pb_int(2, fmt) + pb_bytes(3, pb_shape(shape, packed))
    if output:
        if original:
            body += pb_bytes(4, pb_bytes(1, original[0].encode()) + pb_int(2, original[1]))
        body += pb_int(6, len(raw))
        if original_shape:
            body += pb_bytes(7, pb_shape(original_shape))
    else:
        body += pb_int(5, len(raw))
        if original_shape:
            body += pb_bytes(6, pb_shape(original_shape))
    return body


def write_dump(folder, op_type: str, op_name: str, timestamp: int, inputs, outputs):
    """inputs/outputs: lists of (entry bytes, raw bytes). DumpData: 1 version, 2 dump_time,
    3 output, 4 input, 6 op_name; then the raw data of the inputs, then of the outputs."""
    header = pb_bytes(1, b"2.0") + pb_int(2, timestamp) + pb_bytes(6, op_name.encode())
    header += b"".join(pb_bytes(3, e) for e, _ in outputs) + b"".join(pb_bytes(4, e) for e, _ in inputs)
    blob = struct.pack("<Q", len(header)) + header + b"".join(r for _, r in inputs) + b"".join(r for _, r in outputs)
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in op_name)
    path = folder / f"{op_type}.{safe}.{timestamp % 1000}.0.{timestamp}"
    path.write_bytes(blob)
    return path


@pytest.fixture()
def fake_dump(tmp_path):
    """{dump_path}/{time}/{device_id}/{model_name}/{model_id}/{data_index}/ of one run of model
    "tiny", with: a Conv whose fp16 output is in NC1HWC0 (3 channels, C0 = 16); a fused op whose
    fp32 output stands for ONNX node "Relu_2"; a plain fp16 ND output; a format conversion ATC
    added after the Conv, recording the Conv as its original; an output in FRACTAL_NZ."""
    rng = np.random.default_rng(3)
    run = tmp_path / "dump" / "20240102030405" / "0" / "tiny" / "1" / "0"
    run.mkdir(parents=True)
    conv = rng.standard_normal((1, 3, 2, 2)).astype(np.float16)
    device = np.zeros((1, 1, 2, 2, 16), np.float16)  # N, C1, H, W, C0; channels past 3 are padding
    device[0, 0, :, :, :3] = conv[0].transpose(1, 2, 0)
    device[0, 0, :, :, 3:] = 7  # padding must not leak
    image = rng.standard_normal((1, 3, 2, 2)).astype(np.float16)
    write_dump(run, "Conv2D", "/conv/Conv", 1700000000000001,
               [(entry(image.tobytes(), DT_FLOAT16, FORMAT_NCHW, [1, 3, 2, 2], output=False), image.tobytes())],
               [(entry(device.tobytes(), DT_FLOAT16, FORMAT_NC1HWC0, [1, 1, 2, 2, 16], output=True,
                       original=("/conv/Conv", 0), original_shape=[1, 3, 2, 2]), device.tobytes())])
    relu = rng.standard_normal((2, 3)).astype(F32)
    write_dump(run, "ConvReluFused", "Conv_1Relu_2", 1700000000000002, [],
               [(entry(relu.tobytes(), DT_FLOAT, FORMAT_ND, [2, 3], output=True, original=("Relu_2", 0),
                       packed=False), relu.tobytes())])
    add = rng.standard_normal((2, 3)).astype(np.float16)
    write_dump(run, "Add", "Add_3", 1700000000000003,
               [(entry(relu.tobytes(), DT_FLOAT, FORMAT_ND, [2, 3], output=False), relu.tobytes())],
               [(entry(add.tobytes(), DT_FLOAT16, FORMAT_ND, [2, 3], output=True), add.tobytes())])
    wrong = np.full((1, 3, 2, 2), 9, np.float16)
    write_dump(run, "TransData", "trans_TransData_4", 1700000000000004, [],
               [(entry(wrong.tobytes(), DT_FLOAT16, FORMAT_NCHW, [1, 3, 2, 2], output=True,
                       original=("/conv/Conv", 0)), wrong.tobytes())])
    nz = np.zeros((1, 1, 16, 16), np.float16)
    bad = write_dump(run, "MatMul", "MatMul_5", 1700000000000005, [],
                     [(entry(nz.tobytes(), DT_FLOAT16, FORMAT_FRACTAL_NZ, [1, 1, 16, 16], output=True,
                             original_shape=[16, 16]), nz.tobytes())])
    return {"root": tmp_path / "dump", "run": run, "conv": conv, "relu": relu, "add": add, "bad": bad}


def test_read_ascend_dump_decodes_fp16_fp32_and_nc1hwc0(fake_dump):
    records = []
    dump = loc.read_ascend_dump(fake_dump["root"], errors="skip", records=records)
    assert set(dump) == {"/conv/Conv", "Relu_2", "Add_3"}
    conv = dump["/conv/Conv"][0]  # from NC1HWC0 back to NCHW; the Conv's own output beats the TransData's
    assert conv.dtype == np.float16 and conv.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(conv, fake_dump["conv"])
    np.testing.assert_array_equal(dump["Relu_2"][0], fake_dump["relu"])  # fused: keyed by its ONNX original
    assert dump["Relu_2"][0].dtype == np.float32
    np.testing.assert_array_equal(dump["Add_3"][0], fake_dump["add"])
    assert [r.op_name for r in records] == ["/conv/Conv", "Conv_1Relu_2", "Add_3", "trans_TransData_4", "MatMul_5"]
    assert records[0].op_type == "Conv2D" and records[0].inputs[0].shape == [1, 3, 2, 2]
    assert any("FRACTAL_NZ" in p for p in records[-1].problems)
    atc = loc.read_ascend_dump(fake_dump["run"], by="atc", errors="skip")
    assert set(atc) == {"/conv/Conv", "Conv_1Relu_2", "Add_3", "trans_TransData_4"}


def test_an_unsupported_format_is_an_error_naming_the_file_and_the_format(fake_dump):
    with pytest.raises(loc.DumpFormatError, match=rf"{fake_dump['bad'].name}.*FRACTAL_NZ"):
        loc.read_ascend_dump(fake_dump["root"])


def test_a_truncated_dump_file_is_an_error_naming_it(fake_dump):
    path = fake_dump["run"] / "Add.Add_3.3.0.1700000000000003"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(loc.DumpFormatError, match="Add_3.*past the end"):
        loc.read_dump_file(path)


def test_several_runs_need_a_data_index(fake_dump):
    second = fake_dump["run"].parent / "1"
    second.mkdir()
    (second / "Add.Add_3.3.0.1700000000000009").write_bytes(
        (fake_dump["run"] / "Add.Add_3.3.0.1700000000000003").read_bytes())
    with pytest.raises(ValueError, match="2 runs.*data_index"):
        loc.read_ascend_dump(fake_dump["root"], errors="skip")
    assert set(loc.read_ascend_dump(fake_dump["root"], data_index=1)) == {"Add_3"}
    assert "Relu_2" in loc.read_ascend_dump(fake_dump["root"], data_index=0, errors="skip")


def test_the_dump_meets_the_onnx_graph_by_node_names(fake_dump):
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv_out"], name="/conv/Conv"),
             helper.make_node("Relu", ["r_in"], ["relu_out"], name="Relu_2"),
             helper.make_node("Add", ["relu_out", "r_in"], ["add_out"], name="Add_3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                           for n in ("image", "w", "r_in")], [])
    tensors = loc.ascend_tensors(helper.make_model(graph), loc.read_ascend_dump(fake_dump["root"], errors="skip"))
    assert set(tensors) == {"conv_out", "relu_out", "add_out"}
    np.testing.assert_array_equal(tensors["add_out"], fake_dump["add"])
    # a reference dump of the same names compares with it row by row
    order = [("conv_out", "/conv/Conv", "Conv"), ("relu_out", "Relu_2", "Relu"), ("add_out", "Add_3", "Add")]
    reference = {"conv_out": fake_dump["conv"].astype(F32), "relu_out": fake_dump["relu"],
                 "add_out": fake_dump["add"].astype(F32) * 2}
    rows = loc.locate(reference, tensors, order)
    assert loc.first_divergence(rows)["node"] == "Add_3"


def test_acl_dump_config_is_the_documented_acl_json(tmp_path):
    config = loc.acl_dump_config(tmp_path / "dumps", "yolact_edge_bs1", path=tmp_path / "acl.json")
    assert config["dump"]["dump_path"] == str(tmp_path / "dumps")
    assert config["dump"]["dump_list"] == [{"model_name": "yolact_edge_bs1"}]
    assert config["dump"]["dump_mode"] == "output"
    assert json.loads((tmp_path / "acl.json").read_text()) == config
    assert (tmp_path / "dumps").is_dir()
    with pytest.raises(ValueError, match="dump_mode"):
        loc.acl_dump_config("d", "m", mode="everything")
