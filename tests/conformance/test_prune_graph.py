"""Pruned graph models in the runtimes: `edgec prune` on a small CNN (ONNX
built here) and on EfficientNet-Lite0.

- TFLite: the pruned 1x1 conv weights stored sparse behind DENSIFY give
  LiteRT (XNNPACK) the outputs of the same weights stored dense (max |diff|
  <= 1e-5 x max |output|; equal where XNNPACK runs both dense, as on x86
  with AVX), f32 and f16 weights; the file holds one DENSIFY per pruned
  1x1 conv, sparse tensors in TF's CSR layout whose values decode to the
  dense file's weights, and is smaller;
- ONNX: a pruned graph runs in onnxruntime with edgec's runtime's outputs
  (max |diff| <= 1e-4 x max |output|), with exactly the requested zeros;
- `edgec run` reads the DENSIFY file back and agrees with LiteRT.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import edgec_run, litert_interp, ort_run, rel_err, run, tiny_cnn

REL_TFLITE = 1e-5
REL_RUNTIME = 1e-4


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx", seed=3, se_and_bn=False)


POINTWISE = ["b0_pw_w", "b1_expand_w", "b1_project_w", "b2_expand_w", "b2_project_w", "head_w"]


def inputs(n: int, shape=(1, 3, 32, 32), seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def litert_outputs(litert, path: Path, xs: list) -> list:
    it = litert_interp(litert, path)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    got = []
    for x in xs:
        it.set_tensor(inp["index"], x)
        it.invoke()
        got.append(it.get_tensor(out["index"]).copy())
    return got


def tflite_model(path: Path):
    """The flatbuffer through LiteRT's own generated schema code."""
    from ai_edge_litert import schema_py_generated as S

    return S, S.Model.GetRootAs(path.read_bytes(), 0)


def op_names(S, m) -> list:
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(m.OperatorCodes(i).BuiltinCode(), m.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(m.OperatorCodesLength())]
    sg = m.Subgraphs(0)
    return [names[codes[sg.Operators(i).OpcodeIndex()]] for i in range(sg.OperatorsLength())]


def index_vector(S, kind, table) -> np.ndarray:
    cls = {S.SparseIndexVector.Int32Vector: S.Int32Vector, S.SparseIndexVector.Uint16Vector: S.Uint16Vector,
           S.SparseIndexVector.Uint8Vector: S.Uint8Vector}[kind]
    v = cls()
    v.Init(table.Bytes, table.Pos)
    return v.ValuesAsNumpy().astype(np.int64)


def decode_sparse(S, m, t) -> np.ndarray:
    """A sparse float32 tensor of the file decoded by hand: TF's CSR layout
    (traversal order 0..rank, every dimension DENSE but the last)."""
    sp = t.Sparsity()
    shape = list(t.ShapeAsNumpy())
    rank = len(shape)
    assert list(sp.TraversalOrderAsNumpy()) == list(range(rank))
    assert sp.BlockMapLength() == 0 and sp.DimMetadataLength() == rank
    for k in range(rank - 1):
        d = sp.DimMetadata(k)
        assert d.Format() == S.DimensionType.DENSE and d.DenseSize() == shape[k]
    last = sp.DimMetadata(rank - 1)
    assert last.Format() == S.DimensionType.SPARSE_CSR
    segments = index_vector(S, last.ArraySegmentsType(), last.ArraySegments())
    indices = index_vector(S, last.ArrayIndicesType(), last.ArrayIndices())
    values = np.frombuffer(m.Buffers(t.Buffer()).DataAsNumpy().tobytes(), np.float32)
    rows = int(np.prod(shape[:-1]))
    assert len(segments) == rows + 1 and segments[-1] == len(indices) == len(values)
    dense = np.zeros((rows, shape[-1]), np.float32)
    for r in range(rows):
        dense[r, indices[segments[r]:segments[r + 1]]] = values[segments[r]:segments[r + 1]]
    return dense.reshape(shape)


def dense_weight(m, name: bytes) -> np.ndarray:
    sg = m.Subgraphs(0)
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        if t.Name() == name:
            return np.frombuffer(m.Buffers(t.Buffer()).DataAsNumpy().tobytes(), np.float32).reshape(t.ShapeAsNumpy())
    raise AssertionError(f"{name} is not in the file")


@pytest.fixture(scope="module")
def pruned_tflite(edgec_bin, cnn, tmp_path_factory) -> tuple[Path, Path]:
    """The CNN's 1x1 convs at 80% (magnitude, per weight): DENSIFY and dense."""
    d = tmp_path_factory.mktemp("pruned")
    sparse, dense = d / "sparse.tflite", d / "dense.tflite"
    args = ["--method", "magnitude", "--sparsity", "0.8", "--ops", "pointwise"]
    run([edgec_bin, "prune", cnn, sparse, *args])
    run([edgec_bin, "prune", cnn, dense, *args, "--tflite-sparse", "off"])
    return sparse, dense


def test_sparse_storage_equals_dense_in_litert(litert, pruned_tflite, edgec_bin, cnn, tmp_path):
    sparse, dense = pruned_tflite
    xs = [x.transpose(0, 2, 3, 1).copy() for x in inputs(4)]
    got, ref = litert_outputs(litert, sparse, xs), litert_outputs(litert, dense, xs)
    unpruned = tmp_path / "unpruned.tflite"
    run([edgec_bin, "convert", cnn, unpruned])
    before = litert_outputs(litert, unpruned, xs)
    for g, r, b in zip(got, ref, before):
        err = rel_err(g, r)
        print(f"LiteRT, DENSIFY vs dense storage: max rel {err:.2e}")
        assert err <= REL_TFLITE
        assert rel_err(r, b) > 1e-3, "pruning at 80% changes the logits"


def test_file_holds_densify_and_csr_tensors(litert, pruned_tflite):
    sparse, dense = pruned_tflite
    S, m = tflite_model(sparse)
    ops = op_names(S, m)
    assert ops.count("DENSIFY") == len(POINTWISE), ops
    assert ops[: len(POINTWISE)] == ["DENSIFY"] * len(POINTWISE), "DENSIFY runs first"
    _, md = tflite_model(dense)
    assert "DENSIFY" not in op_names(S, md)
    sg = m.Subgraphs(0)
    decoded = {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        if t.Sparsity() is not None:
            decoded[t.Name()] = decode_sparse(S, m, t)
    assert sorted(decoded) == sorted(f"{n}/sparse".encode() for n in POINTWISE), sorted(decoded)
    for name, w in decoded.items():
        ref = dense_weight(md, name.removesuffix(b"/sparse"))
        np.testing.assert_array_equal(w, ref)
        assert abs((w == 0).mean() - 0.8) < 0.01, f"{name}: {(w == 0).mean():.3f} zeros"
    # LiteRT lists the ops it loaded
    it = litert_interp(litert, sparse)
    assert sum(d["op_name"] == "DENSIFY" for d in it._get_ops_details()) == len(POINTWISE)
    assert sparse.stat().st_size < dense.stat().st_size


def test_f16_sparse_storage_equals_f16_dense(litert, edgec_bin, cnn, tmp_path):
    pruned = tmp_path / "pruned.onnx"
    run([edgec_bin, "prune", cnn, pruned, "--method", "magnitude", "--sparsity", "0.75", "--ops", "pointwise"])
    sparse, dense = tmp_path / "sparse16.tflite", tmp_path / "dense16.tflite"
    run([edgec_bin, "convert", pruned, sparse, "--dtype", "f16"])
    run([edgec_bin, "convert", pruned, dense, "--dtype", "f16", "--tflite-sparse", "off"])
    S, m = tflite_model(sparse)
    ops = op_names(S, m)
    assert ops.count("DENSIFY") == len(POINTWISE) and "DEQUANTIZE" in ops, ops
    xs = [x.transpose(0, 2, 3, 1).copy() for x in inputs(2, seed=1)]
    for g, r in zip(litert_outputs(litert, sparse, xs), litert_outputs(litert, dense, xs)):
        assert rel_err(g, r) <= REL_TFLITE


def test_pruned_onnx_runs_in_onnxruntime_like_edgec(edgec_bin, cnn, tmp_path):
    out = tmp_path / "pruned.onnx"
    run([edgec_bin, "prune", cnn, out, "--method", "magnitude", "--sparsity", "0.6", "--global"])
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    targets = [n for n in w if n.endswith("_w") and "_dw_" not in n]
    zeros = sum(int((w[n] == 0).sum()) for n in targets)
    total = sum(w[n].size for n in targets)
    assert zeros == round(0.6 * total), (zeros, total)
    for n in w:
        if "_dw_" in n or n.endswith("_b"):
            assert (w[n] != 0).all() or n == "fc_b", f"{n} is left dense"
    for x in inputs(3, seed=2):
        ref = ort_run(out, {"input": x})[0]
        ours = edgec_run(edgec_bin, out, {"input": x}, tmp_path)["logits"]
        err = rel_err(ours, ref)
        print(f"pruned CNN, edgec vs onnxruntime: max rel {err:.2e}")
        assert err <= REL_RUNTIME
        assert rel_err(ort_run(cnn, {"input": x})[0], ref) > 1e-3, "pruning changes the logits"


def test_effnet_pointwise_75_through_densify(litert, edgec_bin, effnet, tmp_path):
    sparse, dense = tmp_path / "effnet.sparse.tflite", tmp_path / "effnet.dense.tflite"
    args = ["--method", "magnitude", "--sparsity", "0.75", "--ops", "pointwise"]
    run([edgec_bin, "prune", effnet, sparse, *args])
    run([edgec_bin, "prune", effnet, dense, *args, "--tflite-sparse", "off"])
    S, m = tflite_model(sparse)
    assert op_names(S, m).count("DENSIFY") == 32
    x = inputs(1, shape=(1, 224, 224, 3), seed=4)[0] * 0.5
    got, ref = litert_outputs(litert, sparse, [x])[0], litert_outputs(litert, dense, [x])[0]
    assert rel_err(got, ref) <= REL_TFLITE
    ours = edgec_run(edgec_bin, sparse, {"input": x}, tmp_path)["logits"]
    err = rel_err(ours, got)
    print(f"EfficientNet-Lite0 1x1 convs at 75%: edgec on the DENSIFY file vs LiteRT: max rel {err:.2e}")
    assert err <= REL_RUNTIME
    assert sparse.stat().st_size < 0.65 * dense.stat().st_size
