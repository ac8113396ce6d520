"""Keras (tf_keras) model -> TFLite flatbuffer, float, dynamic-range or int8.

Conversion reads a SavedModel of the model called with ``training=False``,
its inputs and outputs named after the Keras model's and its variables frozen
(``mntk.export.signature``).

Quantization modes (``quantize=``):

- ``"none"``: float32 weights and activations.
- ``"dynamic"``: dynamic-range quantization; weights stored int8, activations
  quantized on the fly by the kernels, float in/out. The converter only
  quantizes weight tensors of >= 1024 elements; smaller ones stay float.
- ``"int8"``: full-integer. For a float model the activation ranges come from
  ``representative_data`` (post-training calibration; the forms it may take
  are ``mntk.export.representative``'s) and every op must have
  an int8 kernel: the converter quietly keeps ops without one in float, so
  ``to_tflite`` inspects the file and raises unless ``allow_float_ops=True``. For a
  tfmot quantization-aware model (it holds ``QuantizeWrapperV2`` /
  ``QuantizeLayer``) the trained ranges are used as they are, so no
  representative data is needed.

Model inputs/outputs stay float32 by default (``inference_io="float"``): the
file quantizes the inputs and dequantizes the outputs itself, which keeps it a
drop-in replacement and makes parity checks direct. ``inference_io="int8"``
gives int8 input and output tensors for integer-only hardware; use the
tensors' scale and zero point to convert (``verify`` does this for you).

Sparse encoding (``sparse=``, on by default for pruned models): weight tensors
with enough exact zeros are stored in TFLite's sparse format (converter option
``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``; Elsen et al., "Fast Sparse
ConvNets", CVPR 2020, is what XNNPACK's sparse kernels implement). The file is
then prepared and run once with the interpreter settings used in deployment
(LiteRT's default XNNPACK delegate, ``num_threads``); when the converter finds
no tensor sparse enough, or LiteRT cannot run the sparse file (this stack:
XNNPACK fails to prepare an int8 FULLY_CONNECTED with sparse weights, and
delegating dynamic-range CONV_2D with sparse weights), the dense file is
written instead and ``ExportResult.sparse_note`` (also printed as one line to
stderr) says why. What the encoding buys everywhere: the file size (float
75%-sparse MobileNetV2: ~0.4x). Speed only where XNNPACK runs its sparse
kernels (float32, one NCHW chain from a 3x3 stride-2 first conv to a global
average pool, a CPU without AVX: ``mntk.export.sparse_path``); elsewhere the
file runs dense and ``ExportResult.sparse_path_note`` (printed) says why.
"""
import dataclasses
import os
import re
import sys
import time

import tensorflow as tf

from mntk import wrapped
from mntk.compat import ensure_tf_keras, keras
from mntk.export.diagnostics import (_layer_for, describe_converter_error, float_ops,
                                     prepare_error, tensor_summary)
from mntk.export import signature
from mntk.export.representative import _representative_generator
from mntk.export.sparse_path import is_pruned

QUANTIZE_MODES = ("none", "dynamic", "int8")
INFERENCE_IO = ("float", "int8")


class ExportError(RuntimeError):
    """The TFLite converter rejected the model; the message names op and layer."""


@dataclasses.dataclass
class ExportResult:
    """What ``to_tflite`` wrote.

    Attributes:
      path: the .tflite file.
      bytes: its size in bytes.
      quantize: "none", "dynamic" or "int8".
      inference_io: "float" or "int8" (dtype of the file's inputs/outputs).
      qat: True when the model was a tfmot quantization-aware model.
      input_names / output_names: signature names, in the Keras model's order.
      seconds: wall time of the conversion.
      float_ops: for quantize="int8", ops still computing in float32, as
        "OP@layer" (empty for a fully integer file).
      sparse: True when the file stores weights in the sparse format.
      sparse_note: why a requested sparse encoding was not written ("" when it
        was, or was not requested).
      num_threads: LiteRT threads the file was checked with (sparse export).
      sparse_path_note: for a sparse file, one line saying whether XNNPACK
        runs it with its sparse kernels here, or names the layer (or the CPU
        or precision) that makes it run dense (``mntk.export.sparse_path``).
    """
    path: str
    bytes: int
    quantize: str
    inference_io: str = "float"
    qat: bool = False
    input_names: tuple = ()
    output_names: tuple = ()
    seconds: float = 0.0
    float_ops: tuple = ()
    sparse: bool = False
    sparse_note: str = ""
    num_threads: int = 1
    sparse_path_note: str = ""

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["float_ops"] = list(self.float_ops)
        d["input_names"] = list(self.input_names)
        d["output_names"] = list(self.output_names)
        return d


def _log(progress, message):
    if progress:
        print(f"[mntk.export] {message}", file=sys.stderr, flush=True)


def is_qat_model(model) -> bool:
    """True when ``model`` holds tfmot quantization-aware layers."""
    return wrapped.is_quantized(model)


def _check_writable(path):
    """Create the parent directory and fail early if ``path`` cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"cannot write the TFLite file to {path!r}: creating its directory "
            f"{parent!r} failed ({e.strerror or e}). Pass a path in a writable "
            "directory.") from e
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"cannot write the TFLite file to {path!r}: it is a directory. Pass "
            "a file path such as "
            f"{os.path.join(path, 'model.tflite')!r}.")
    if not os.access(parent, os.W_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(
            f"cannot write the TFLite file to {path!r}: no write permission on "
            f"{parent if not os.path.exists(path) else path!r}. Pass a path in a "
            "writable directory.")


def _convert(model, function, quantize, qat, representative_data, inference_io,
             max_representative_samples, sparse):
    """One converter run: the flatbuffer, or ExportError naming op and layer."""
    with signature.saved_model(function) as directory:
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        return _configured(converter, model, quantize, qat, representative_data,
                           inference_io, max_representative_samples, sparse)


def _configured(converter, model, quantize, qat, representative_data, inference_io,
                max_representative_samples, sparse):
    """Set ``converter``'s options and run it (inside the SavedModel's lifetime)."""
    optimizations = []
    if quantize in ("dynamic", "int8"):
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "int8":
        if representative_data is not None:
            converter.representative_dataset = _representative_generator(
                representative_data, model, max_representative_samples)
        if not qat:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if inference_io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as e:  # ConverterError has no public base class
        if type(e).__name__ != "ConverterError":
            raise
        lines = describe_converter_error(e, model)
        detail = "; ".join(lines) if lines else str(e).splitlines()[0]
        same_scale = _same_scale_violation(e, model)
        if same_scale:
            detail, hint = same_scale
        elif qat:
            # quantize='dynamic' is refused for QAT models: leaving the layer
            # float is the way out there.
            hint = ("TFLite has no int8 kernel for it: replace the layer with builtin "
                    "ops, or leave it float with mntk.quantization.quantize(..., "
                    "skip=[layer name]).")
        else:
            hint = ("TFLite has no (int8) kernel for it: replace the layer with "
                    "builtin ops" + (", or use quantize='dynamic'" if quantize == "int8"
                                     else "") + ".")
        raise ExportError(
            f"TFLite conversion of {model.name!r} (quantize={quantize!r}) failed: "
            f"{detail}. {hint}") from e


def _same_scale_violation(error, model):
    """``(detail, hint)`` when the converter refused a QAT model because an op
    whose int8 kernel reads and writes one scale (AVERAGE_POOL_2D, MAX_POOL_2D,
    RESHAPE, CONCATENATION, ...; the converter's "same scale constraint") got
    different input and output ranges, else None."""
    text = " ".join(str(error).split())
    found = re.search(r"'tfl\.(\w+)' op quantization parameters violate the same "
                      r"scale constraint", text)
    if not found:
        return None
    op = found.group(1).upper()
    layer = _layer_for(text[:found.start()], model) or _layer_for(text, model)
    if layer:  # the user's layer name, not its QAT wrapper's (quant_<name>)
        layer = wrapped.unwrap(model.get_layer(layer)).name
    where = f"op {op} in layer {layer!r}" if layer else f"op {op} (layer not identified)"
    name = repr(layer) if layer else "that layer"
    return (f"{where}: TFLite's int8 {op} kernel keeps its input's scale, and the "
            "QAT model quantizes its input and output with different ranges (the "
            "converter's same-scale constraint)",
            f"Leave the layer's output unquantized so it takes its input's scale: "
            f"mntk.quantization.quantize(model, scheme, skip=[{name}]) (a layer "
            "without weights computes the same function unquantized).")


def to_tflite(model, path, quantize="none", representative_data=None, *,
              inference_io="float", max_representative_samples=500,
              allow_float_ops=False, sparse=None, num_threads=1,
              progress=True) -> ExportResult:
    """Convert a tf_keras model to a TFLite file at ``path``.

    Args:
      model: a functional or sequential tf_keras model, float or tfmot QAT.
      path: the .tflite file to write; parent directories are created.
      quantize: "none" (float32), "dynamic" (int8 weights, float activations)
        or "int8" (full integer; see the module docstring).
      representative_data: inputs for int8 calibration of a float model: a
        tf.data.Dataset or iterable yielding x or (x, y), or a numpy array.
        Not needed for a QAT model.
      inference_io: "float" (default) keeps float32 inputs/outputs with the
        (de)quantization inside the file; "int8" makes them int8 (quantize="int8"
        only).
      max_representative_samples: calibration stops after this many samples.
      allow_float_ops: with quantize="int8" on a float model, accept ops the
        converter leaves in float32 (no int8 kernel) instead of raising.
        QAT models always allow them (layers left float on purpose).
      sparse: store sparse weight tensors in TFLite's sparse format. None
        (default): when the model is pruned (``is_pruned``). When the converter
        or LiteRT cannot do it for this quantization, the dense file is
        written and ``sparse_note`` (printed) says why; when the sparse file
        will run dense, ``sparse_path_note`` (printed) says why.
      num_threads: LiteRT threads of the deployment the sparse file is
        checked with (prepared and run once with the default XNNPACK delegate).
      progress: print one line per phase to stderr.

    Returns:
      ExportResult with ``path``, ``bytes``, ``quantize`` and more.

    Raises:
      ValueError: bad ``quantize``/``inference_io`` value, missing
        representative data, or "dynamic" for a QAT model.
      OSError: ``path`` cannot be written (the message names it).
      ExportError: the converter rejected an op (the message names op and layer).
    """
    ensure_tf_keras(model)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize={quantize!r} is not a TFLite export mode; use one of "
            f"{', '.join(repr(q) for q in QUANTIZE_MODES)}.")
    if inference_io not in INFERENCE_IO:
        raise ValueError(
            f"inference_io={inference_io!r} is not valid; use one of "
            f"{', '.join(repr(q) for q in INFERENCE_IO)}.")
    if inference_io == "int8" and quantize != "int8":
        raise ValueError(
            f"inference_io='int8' needs quantize='int8' (got quantize={quantize!r}); "
            "a float or dynamic-range model has float inputs and outputs.")
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"to_tflite needs a keras.Model, got the layer {model.name!r} "
            f"({type(model).__name__}); wrap it: keras.Sequential([layer]) with an "
            "Input.")
    qat = is_qat_model(model)
    if qat and quantize == "dynamic":
        raise ValueError(
            f"model {model.name!r} is quantization-aware (tfmot); its weights and "
            "activations already carry trained ranges. Export it with "
            "quantize='int8' (no representative data needed), or 'none'.")
    if quantize == "int8" and not qat and representative_data is None:
        raise ValueError(
            f"quantize='int8' for the float model {model.name!r} needs activation "
            "ranges: pass representative_data= (a tf.data.Dataset, numpy array or "
            "generator of ~100-500 typical inputs), or use quantize='dynamic', or "
            "export a quantization-aware (tfmot) model.")
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"model {model.name!r} has no defined inputs; build it with "
            "keras.Input (functional) or call it on data before exporting.")
    path = os.fspath(path)
    _check_writable(path)

    start = time.perf_counter()
    _log(progress, f"tracing {model.name!r} ({'QAT, ' if qat else ''}"
                   f"quantize={quantize})")
    # Per-channel learned activation grids have no exact TFLite form (one
    # scale per activation tensor): traced on one 8-bit grid per tensor
    # (mntk.quantization._per_channel), and said so, never silently.
    from mntk.quantization import _per_channel
    mapped = _per_channel.per_channel_activation_layers(model) if qat else []
    if mapped:
        print(f"[mntk.export] {model.name!r}: per-channel activation grids of "
              f"{', '.join(mapped)} exported on one 8-bit grid per tensor (their "
              "union range, per-channel clips kept); check with "
              "mntk.export.verify, or quantize with per_channel=False for an "
              "exact export.", file=sys.stderr, flush=True)
    with _per_channel.per_tensor_export():
        function, input_names, output_names = signature.serving_function(model)
    want_sparse = is_pruned(model) if sparse is None else bool(sparse)
    sparse_note = path_note = ""
    _log(progress, "converting" + (" (calibrating on representative data)"
                                   if quantize == "int8" and not qat else "")
         + (" with the sparse encoding" if want_sparse else ""))
    flatbuffer = _convert(model, function, quantize, qat, representative_data,
                          inference_io, max_representative_samples, want_sparse)
    if want_sparse:
        found = tensor_summary(flatbuffer)["sparse"]
        error = prepare_error(flatbuffer, num_threads) if found else None
        if not found:
            sparse_note = ("no weight tensor of the model is sparse enough for "
                           "the converter's sparse encoding; wrote it dense")
        elif error:
            sparse_note = (f"LiteRT with XNNPACK ({num_threads} thread(s)) cannot "
                           f"run the sparse {quantize!r} file ({error}); wrote it "
                           "dense")
            flatbuffer = _convert(model, function, quantize, qat,
                                  representative_data, inference_io,
                                  max_representative_samples, False)
        if sparse_note:
            # Never silent: the caller asked (or pruning implied) sparse.
            print(f"[mntk.export] {model.name!r}: sparse export dropped: "
                  f"{sparse_note}.", file=sys.stderr, flush=True)
        else:
            from mntk.export.sparse_path import sparse_kernels
            fast, path_note = sparse_kernels(model, quantize)
            if not fast:
                # The file is smaller but will not run faster: say why once.
                print(f"[mntk.export] {model.name!r}: sparse file written; "
                      f"{path_note}.", file=sys.stderr, flush=True)
    remaining_float = float_ops(flatbuffer, model) if quantize == "int8" else []
    if remaining_float and not qat and not allow_float_ops:
        # The converter keeps ops without an int8 kernel in float even with
        # TFLITE_BUILTINS_INT8; a full-integer request must not hide that.
        listed = "; ".join(f"op {op} in layer {layer!r}" if layer else f"op {op}"
                           for op, layer in dict.fromkeys(remaining_float))
        raise ExportError(
            f"quantize='int8' for {model.name!r} left ops in float32 (no int8 "
            f"kernel): {listed}. Replace those layers with int8-capable ops, or "
            "pass allow_float_ops=True to accept a partly float model.")

    try:
        with open(path, "wb") as f:
            f.write(flatbuffer)
    except OSError as e:
        raise OSError(
            f"cannot write the TFLite file to {path!r}: {e.strerror or e}. Pass a "
            "path in a writable directory.") from e
    seconds = time.perf_counter() - start
    _log(progress, f"wrote {path} ({len(flatbuffer):,} bytes, {seconds:.1f} s)")
    return ExportResult(path=path, bytes=len(flatbuffer), quantize=quantize,
                        inference_io=inference_io, qat=qat,
                        input_names=tuple(input_names),
                        output_names=tuple(output_names), seconds=seconds,
                        float_ops=tuple(f"{op}@{layer}" if layer else op
                                        for op, layer in remaining_float),
                        sparse=tensor_summary(flatbuffer)["sparse"] > 0,
                        sparse_note=sparse_note, num_threads=int(num_threads),
                        sparse_path_note=path_note)
