"""Run bundled .tflite models (MediaPipe's face models, FER) with ai-edge-litert, shared and thread-safe.

One interpreter per model file is built lazily and cached for the process (loading costs ~10-50 ms; a
call costs 1-4 ms). A TFLite interpreter is not safe to call from two threads at once, so each model has
its own lock held from ``set_tensor`` to the last ``get_tensor``.

Batches: a model whose graph accepts another batch size (face_landmark, selfie_segmentation) is resized
once per new batch size; one whose graph hard-codes batch 1 (the BlazeFace detectors, iris_landmark:
their reshapes are fixed) is run item by item. Callers always pass and get arrays with a leading batch
axis and never need to know which.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import numpy as np

# Two threads per interpreter: the target machine has two cores, and several tools may run side by side.
NUM_THREADS = int(os.environ.get("FACELLM_TFLITE_THREADS", 2))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ runtime's "INFO: Created TensorFlow Lite XNNPACK delegate" line, which would
    otherwise end up in every command's output; Python-level errors still propagate as exceptions."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class ModelRunError(ValueError):
    """A model could not be loaded or was given input of the wrong shape."""


class LiteModel:
    """One .tflite model: ``run(x)`` takes a float32 batch NHWC array and returns {output name: array}."""

    def __init__(self, path: str | os.PathLike, num_threads: int = NUM_THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        try:
            with _quiet_stderr():
                self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelRunError(f"cannot load the model {self.path}: {e}") from None
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise ModelRunError(f"{self.path.name} has {len(inputs)} inputs; LiteModel handles one")
        self._input = inputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in self._input["shape"])
        self.output_names: list[str] = [o["name"] for o in self._interp.get_output_details()]
        self._batch = self.input_shape[0]
        self._batchable: bool | None = None  # unknown until a batch of another size comes
        self._lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of one input image."""
        return self.input_shape[1], self.input_shape[2]

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._interp.set_tensor(self._input["index"], x)
        self._interp.invoke()
        # get_tensor copies, so results stay valid after the lock is released.
        return {o["name"]: self._interp.get_tensor(o["index"]) for o in self._interp.get_output_details()}

    def _resize(self, n: int) -> bool:
        try:
            self._interp.resize_tensor_input(self._input["index"], [n, *self.input_shape[1:]])
            self._interp.allocate_tensors()
            self._batch = n
            return True
        except (ValueError, RuntimeError):
            self._interp.resize_tensor_input(self._input["index"], list(self.input_shape))
            self._interp.allocate_tensors()
            self._batch = self.input_shape[0]
            return False

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) or x.shape[1:] != self.input_shape[1:]:
            raise ModelRunError(
                f"{self.path.name} expects input (N, {', '.join(map(str, self.input_shape[1:]))}); got {x.shape}"
            )
        n = x.shape[0]
        if n == 0:
            raise ModelRunError(f"{self.path.name}: empty batch")
        with self._lock:
            if n == self._batch:
                return self._invoke(x)
            if self._batchable is not False:
                ok = self._resize(n)
                if ok:
                    try:
                        out = self._invoke(x)
                        self._batchable = True
                        return out
                    except (ValueError, RuntimeError):
                        # Some graphs allocate fine at batch N but fail in a fixed reshape at run time.
                        self._resize(self.input_shape[0])
                self._batchable = False
            if self._batch != self.input_shape[0]:
                self._resize(self.input_shape[0])
            parts = [self._invoke(x[i : i + 1]) for i in range(n)]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


_models: dict[Path, LiteModel] = {}
_models_lock = threading.Lock()


def load_model(path: str | os.PathLike) -> LiteModel:
    """The shared LiteModel for a .tflite file (built on first use)."""
    key = Path(path).resolve()
    with _models_lock:
        model = _models.get(key)
        if model is None:
            if not key.is_file():
                raise ModelRunError(f"model file not found: {key}")
            model = _models[key] = LiteModel(key)
        return model
