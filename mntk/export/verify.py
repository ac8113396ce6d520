"""Parity check: run a .tflite file with LiteRT and the Keras model on the same data.

Inference on the LiteRT side runs in batches through the file's signature
runner (``ai_edge_litert.interpreter.Interpreter``; ``tf.lite.Interpreter`` is
deprecated): the runner resizes the input tensors to each batch, which is much
faster than a per-sample loop and gives the same numbers because TFLite ops
work per sample.

Outputs are matched to the Keras outputs by signature name (``to_tflite``
names them ``model.output_names``); files from other converters with generic
names ``output_<i>`` are matched by index; otherwise by shape and closeness of
values on the first batch. int8 input/output tensors are (de)quantized with the
tensor's scale and zero point: q = clip(round(x / scale) + zero_point), and
x = (q - zero_point) * scale.

Per output the result holds (Jacob et al., CVPR 2018 is the reference for the
affine quantization scheme):
  agreement      = mean_i [argmax tflite_i == argmax keras_i]  (top-1)
  max_abs_diff   = max |tflite - keras| over all elements
  accuracy_*     = mean_i [argmax output_i == label_i]         (with labels)
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras
from mntk.export.representative import _array_ndim


@dataclasses.dataclass
class OutputParity:
    """Parity figures of one model output."""
    name: str
    samples: int
    agreement: float | None  # None for outputs with a last dimension of 1
    max_abs_diff: float
    mean_abs_diff: float
    accuracy_tflite: float | None = None
    accuracy_keras: float | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VerifyResult:
    """Parity of a TFLite file with its Keras model, one entry per output.

    ``outputs`` follows the Keras model's output order. The top-level
    properties summarize: ``agreement`` is the lowest over outputs,
    ``max_abs_diff`` the largest, and ``accuracy_tflite``/``accuracy_keras``
    those of the last output (the final output in mntk's multi-exit models).
    ``result["name"]`` or ``result[i]`` gives one output's figures.
    """
    path: str
    samples: int
    outputs: list
    interpreter: dict = dataclasses.field(default_factory=dict)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.outputs[key]
        for out in self.outputs:
            if out.name == key:
                return out
        raise KeyError(f"no output {key!r}; outputs are "
                       f"{[o.name for o in self.outputs]}")

    @property
    def agreement(self):
        values = [o.agreement for o in self.outputs if o.agreement is not None]
        return min(values) if values else None

    @property
    def max_abs_diff(self):
        return max(o.max_abs_diff for o in self.outputs)

    @property
    def accuracy_tflite(self):
        return self.outputs[-1].accuracy_tflite

    @property
    def accuracy_keras(self):
        return self.outputs[-1].accuracy_keras

    def to_dict(self):
        return {
            "path": self.path, "samples": self.samples,
            "agreement": self.agreement, "max_abs_diff": self.max_abs_diff,
            "accuracy_tflite": self.accuracy_tflite,
            "accuracy_keras": self.accuracy_keras,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
            "interpreter": dict(self.interpreter),
        }


def quantize_input(x, details):
    """float -> the tensor's integer dtype with its scale and zero point."""
    dtype = details["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(x, dtype)
    scale, zero_point = _scale_zero_point(details)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(q, details):
    """An integer output tensor -> float with its scale and zero point."""
    if not np.issubdtype(np.asarray(q).dtype, np.integer):
        return np.asarray(q, np.float32)
    scale, zero_point = _scale_zero_point(details)
    return ((np.asarray(q, np.float32) - zero_point) * scale).astype(np.float32)


def _scale_zero_point(details):
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    zero_points = np.asarray(params.get("zero_points", []))
    if scales.size == 0:
        scale, zero_point = details.get("quantization", (0.0, 0))
    else:
        scale, zero_point = scales[0], zero_points[0]
    if not scale:
        raise ValueError(f"tensor {details['name']!r} is {details['dtype'].__name__} "
                         "but has no quantization scale; cannot convert it.")
    return float(scale), int(zero_point)


def _batches(data, model, batch_size):
    """Yield (inputs list, labels or None) batches from the supported data forms."""
    n_inputs = len(model.inputs)
    ranks = [len(t.shape) for t in model.inputs]

    def split(element):
        if isinstance(element, dict):
            return [element[n] for n in model.input_names], None
        if isinstance(element, (tuple, list)):
            if n_inputs > 1 and len(element) == n_inputs and all(
                    _array_ndim(e) in (r, r - 1) for e, r in zip(element, ranks)):
                return list(element), None
            x, y = element[0], (element[1] if len(element) > 1 else None)
            xs = list(x) if n_inputs > 1 and isinstance(x, (list, tuple)) else (
                [x[n] for n in model.input_names] if isinstance(x, dict) else [x])
            return xs, y
        return [element], None

    def batched(xs, y):
        xs = [np.asarray(x) for x in xs]
        single = xs[0].ndim == ranks[0] - 1
        if single:
            xs = [x[None] for x in xs]
            y = None if y is None else _map_labels(y, lambda a: np.asarray(a)[None])
        return xs, y

    if isinstance(data, tf.data.Dataset):
        for element in data.as_numpy_iterator():
            yield batched(*split(element))
        return
    if isinstance(data, (np.ndarray, tuple, list, dict)) or tf.is_tensor(data):
        xs, y = split(data)
        xs = [np.asarray(x) for x in xs]
        if xs[0].ndim == ranks[0] - 1:
            yield batched(xs, y)
            return
        for i in range(0, len(xs[0]), batch_size):
            yield ([x[i:i + batch_size] for x in xs],
                   None if y is None else _map_labels(
                       y, lambda a: np.asarray(a)[i:i + batch_size]))
        return
    for element in data:  # any other iterable of batches
        yield batched(*split(element))


def _map_labels(y, fn):
    if isinstance(y, dict):
        return {k: fn(v) for k, v in y.items()}
    if isinstance(y, (list, tuple)):
        return [fn(v) for v in y]
    return fn(y)


def _labels_per_output(y, output_names):
    """Labels for each output: per-output list/dict, or one array shared by all."""
    if y is None:
        return [None] * len(output_names)
    if isinstance(y, dict):
        return [y.get(n) for n in output_names]
    if isinstance(y, (list, tuple)) and len(output_names) > 1 \
            and len(y) == len(output_names):
        return list(y)
    return [y] * len(output_names)


def _class_ids(labels, output):
    labels = np.asarray(labels)
    if labels.ndim == output.ndim and labels.shape[-1] == output.shape[-1] \
            and output.shape[-1] > 1:
        return labels.argmax(-1)  # one-hot or soft labels
    return labels.reshape(output.shape[:-1]).astype(np.int64)


def _match_outputs(signature_names, output_names, tflite_out, keras_out):
    """Map each Keras output index to a TFLite signature output name."""
    if set(signature_names) == set(output_names):
        return list(output_names)
    if len(signature_names) != len(output_names):
        raise ValueError(
            f"the TFLite file has {len(signature_names)} outputs "
            f"{sorted(signature_names)} but the Keras model has "
            f"{len(output_names)} {list(output_names)}; verify it against the "
            "model it was exported from.")
    if len(output_names) == 1:
        return list(signature_names)
    generic = {f"output_{i}" for i in range(len(output_names))}
    if set(signature_names) == generic:
        return [f"output_{i}" for i in range(len(output_names))]
    # Unknown naming: pair by shape, then by closeness of values.
    free, mapping = set(signature_names), []
    for k in keras_out:
        candidates = [n for n in free if tflite_out[n].shape == k.shape]
        if not candidates:
            raise ValueError(
                f"no TFLite output has the shape {k.shape} of a Keras output; "
                f"TFLite outputs: { {n: tflite_out[n].shape for n in signature_names} }")
        best = min(candidates, key=lambda n: np.abs(tflite_out[n] - k).max())
        mapping.append(best)
        free.remove(best)
    return mapping


def _input_order(signature_inputs, input_names):
    if set(signature_inputs) == set(input_names):
        return list(input_names)
    if len(signature_inputs) == len(input_names) == 1:
        return list(signature_inputs)
    generic = [f"args_{i}" for i in range(len(input_names))]
    if set(signature_inputs) == set(generic):
        return generic
    # Otherwise sort both by trailing index, if any, else alphabetically.
    def key(name):
        m = re.search(r"(\d+)$", name)
        return (int(m.group(1)) if m else -1, name)
    return sorted(signature_inputs, key=key)


DELEGATES = ("xnnpack", "none")


def verify(tflite_path, model, data, batch_size=256, num_threads=None,
           progress=False, delegate="xnnpack") -> VerifyResult:
    """Compare a TFLite file (LiteRT) with ``model`` (Keras) on ``data``.

    Args:
      tflite_path: a file written by ``to_tflite`` (or any single-signature
        TFLite file with the same inputs and outputs), or the ``ExportResult``
        ``to_tflite`` returned (then its ``num_threads`` is the default).
      model: the tf_keras model the file was exported from.
      data: numpy inputs x, a tuple (x, y), or a tf.data.Dataset / iterable
        yielding x or (x, y) batches. y is class ids or one-hot; for several
        outputs, a list/dict of labels per output or one array for all.
      batch_size: batch size used for numpy data.
      num_threads: LiteRT interpreter threads (default: the ExportResult's,
        else LiteRT's choice).
      progress: show a progress bar over the samples (for large data sets).
      delegate: "xnnpack" (default): LiteRT's default CPU set-up, the XNNPACK
        delegate with the builtin kernels for what it does not take, as a
        deployment runs the file; "none": LiteRT's builtin kernels only
        (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``).

    Returns:
      VerifyResult (one OutputParity per output, in Keras output order).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ensure_tf_keras(model)
    if delegate not in DELEGATES:
        raise ValueError(f"verify: delegate={delegate!r} is not one of {DELEGATES}.")
    if num_threads is None:
        num_threads = getattr(tflite_path, "num_threads", None)
    tflite_path = str(getattr(tflite_path, "path", tflite_path))
    if not os.path.isfile(tflite_path):
        raise FileNotFoundError(
            f"verify: no TFLite file at {tflite_path!r}; write one with "
            "mntk.export.to_tflite(model, path) first.")
    resolver = (OpResolverType.AUTO if delegate == "xnnpack" else
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter = Interpreter(model_path=tflite_path, num_threads=num_threads,
                              experimental_op_resolver_type=resolver)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"{tflite_path} has {len(signatures)} signatures "
                         f"{list(signatures)}; verify expects exactly one (files from "
                         "mntk.export.to_tflite have one).")
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    input_details = runner.get_input_details()
    output_details = runner.get_output_details()
    input_order = _input_order(list(input_details), list(model.input_names))
    output_names = list(model.output_names)

    mapping = None
    tflite_all = [[] for _ in output_names]
    keras_all = [[] for _ in output_names]
    labels_all = [[] for _ in output_names]
    has_labels = True
    bar = keras.utils.Progbar(None, unit_name="sample") if progress else None
    for xs, y in _batches(data, model, batch_size):
        if bar is not None:
            bar.add(len(xs[0]))
        feed = {name: quantize_input(np.asarray(x, np.float32), input_details[name])
                for name, x in zip(input_order, xs)}
        raw = runner(**feed)
        tflite_out = {n: dequantize_output(v, output_details[n]) for n, v in raw.items()}
        keras_out = model(xs if len(xs) > 1 else xs[0], training=False)
        if not isinstance(keras_out, (list, tuple)):
            keras_out = [keras_out]
        keras_out = [np.asarray(k, np.float32) for k in keras_out]
        if mapping is None:
            mapping = _match_outputs(list(tflite_out), output_names, tflite_out,
                                     keras_out)
        for i, name in enumerate(mapping):
            tflite_all[i].append(tflite_out[name])
            keras_all[i].append(keras_out[i])
        if y is None:
            has_labels = False
        elif has_labels:
            for i, labels in enumerate(_labels_per_output(y, output_names)):
                labels_all[i].append(None if labels is None else np.asarray(labels))
    if mapping is None:
        raise ValueError("verify got no data: `data` yielded no batches.")

    outputs = []
    for i, name in enumerate(output_names):
        t = np.concatenate(tflite_all[i])
        k = np.concatenate(keras_all[i])
        diff = np.abs(t - k)
        classify = t.ndim >= 2 and t.shape[-1] > 1
        parity = OutputParity(
            name=name, samples=len(t),
            agreement=float((t.argmax(-1) == k.argmax(-1)).mean()) if classify else None,
            max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
        if has_labels and classify and all(lab is not None for lab in labels_all[i]):
            ids = _class_ids(np.concatenate(labels_all[i]), t)
            parity.accuracy_tflite = float((t.argmax(-1) == ids).mean())
            parity.accuracy_keras = float((k.argmax(-1) == ids).mean())
        outputs.append(parity)
    return VerifyResult(path=tflite_path, samples=outputs[0].samples, outputs=outputs,
                        interpreter={"delegate": delegate, "num_threads": num_threads})


__all__ = ["verify", "VerifyResult", "OutputParity", "quantize_input",
           "dequantize_output"]
