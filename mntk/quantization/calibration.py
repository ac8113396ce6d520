"""Set a QAT model's activation ranges from data before training.

tfmot's 8-bit activation quantizer (``MovingAverageQuantizer``) starts at
[-6, 6] and follows the training batches' range with an exponential moving
average, min <- 0.999 min + 0.001 min(batch) (Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", sec. 3.1). A short fit leaves it near [-6, 6]: with activations
spanning 0.03-0.8, the 256-level grid (step 12/255 = 0.047) holds 1-17 of
them, the Keras model and its int8 TFLite file round to neighbouring steps
and their logits part (EfficientNetB0, ResNet50V2 in
``tests/applications_test.py``: agreement 0.31 and 0.41).

``calibrate_ranges`` does what TFLite's post-training int8 calibrator does
with representative data: it runs the model on a few batches in inference
mode with every quantizer bypassed (the float model), records each quantized
tensor's min and max over all batches, and sets the quantizer's range to
[min(lo, 0), max(hi, 0)] (TFLite's zero point must lie on the grid; a
symmetric quantizer gets tfmot's symmetric range). Training then moves the
ranges from there. Learned-precision activation quantizers get the range as
their base [lo0, hi0] with alpha = 1, beta = 0 and are marked calibrated (as
``load_quantizer_ranges`` does), so their first training batch does not
re-calibrate them on training-mode (batch statistics) activations. tfmot's
kernel quantizers (``LastValueQuantizer``) are set to their kernels' current
range, as their first training step would.
"""
import contextlib
from typing import Dict, Tuple

import tensorflow as tf

from mntk import wrapped

__all__ = ["calibrate_ranges"]

_MISSING = object()


def _entries(model):
    """(key, quantizer, variables) of every activation/output/input quantizer."""
    from mntk.quantization.transfer import _activation_entries
    return list(_activation_entries(model))


def _weight_entries(model):
    return [w for layer in model.layers if wrapped.is_quantize_wrapper(layer)
            for w in wrapped.weight_quantizers(layer)]


@contextlib.contextmanager
def _bypassed(classes, record):
    """Every quantizer of ``classes`` returns its input unchanged; ``record(x,
    weights)`` sees each tensor. Restores the classes' ``__call__`` on exit."""
    saved = {cls: cls.__dict__.get("__call__", _MISSING) for cls in classes}

    def call(self, inputs, training, weights, **kwargs):
        record(inputs, weights)
        return inputs

    try:
        for cls in classes:
            cls.__call__ = call
        yield
    finally:
        for cls, original in saved.items():
            if original is _MISSING:
                del cls.__call__
            else:
                cls.__call__ = original


def _batches(model, data, max_samples):
    from mntk.export.representative import _representative_generator
    for feed in _representative_generator(data, model, max_samples)():
        xs = [tf.constant(feed[name]) for name in model.input_names]
        yield xs[0] if len(xs) == 1 else xs


def _range(quantizer, lo, hi):
    """The quantizer's range for observed [lo, hi]: 0 inside, tfmot's symmetric
    form for a symmetric quantizer, and a non-empty grid."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if getattr(quantizer, "symmetric", False):
        bits = int(getattr(quantizer, "num_bits", 8))
        ratio = -1.0 if getattr(quantizer, "narrow_range", False) else (
            -((1 << bits) - 2) / (1 << bits))
        lo, hi = min(lo, hi / ratio), max(hi, lo * ratio)
    if hi - lo < 1e-6:  # a tensor that is always 0 (a dead ReLU): any grid holds it
        hi = lo + 1e-3
    if hi <= 0.0:  # never positive: TFLite still needs 0 < max
        hi = 1e-3 * max(1.0, -lo)
    return lo, hi


def calibrate_ranges(model, data, max_samples=256) -> Dict[str, Tuple[float, float]]:
    """Set every activation quantizer of a QAT model to its tensor's range on
    ``data`` (in place); returns ``{"layer/kind": (min, max)}`` as set.

    Call it after ``quantize`` and before ``fit`` (or use ``quantize(...,
    calibration_data=...)``), and again before export when the fit was too
    short for tfmot's moving averages to follow the activations (a few steps
    from random weights). See the module docstring for what is set.

    While it runs, the model's quantizer classes pass tensors through
    unchanged (their ``__call__`` is swapped and restored on exit): do not run
    other QAT models in other threads meanwhile.

    Args:
      model: a QAT model made by ``mntk.quantization.quantize`` (tfmot
        wrappers), modified in place: its quantizers' ranges only.
      data: model inputs in any form ``to_tflite``'s ``representative_data``
        takes: an array, a list/dict of arrays, a ``tf.data.Dataset`` or an
        iterable of ``x`` or ``(x, y)``, batched or single samples.
      max_samples: samples used at most (TFLite's calibrator is content with a
        few hundred).

    Raises:
      ValueError: ``model`` has no activation quantizer, or one never saw a
        tensor (it is not on the path from the inputs).
    """
    if not tf.executing_eagerly():
        raise RuntimeError("calibrate_ranges: call it eagerly (not inside a tf.function): "
                           "it reads each quantized tensor's values.")
    entries = _entries(model)
    per_axis = [key for key, q, _ in entries if getattr(q, "per_axis", False)]
    if per_axis:
        raise ValueError(f"calibrate_ranges: quantizers {per_axis} are per-channel "
                         "(per_axis=True); calibration sets one range per tensor. Leave "
                         "them to training, or quantize activations per tensor.")
    if not entries:
        raise ValueError(f"calibrate_ranges: model {model.name!r} has no activation "
                         "quantizer; pass a model made by mntk.quantization.quantize.")
    keys = {id(variables): key for key, _, variables in entries}
    seen = {}

    def record(x, weights):
        key = keys.get(id(weights))
        if key is None:  # a kernel quantizer: the float kernel, as TFLite calibrates
            return
        lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
        old = seen.get(key, (lo, hi))
        seen[key] = (min(old[0], lo), max(old[1], hi))

    classes = {type(q) for _, q, _ in entries}
    classes |= {type(w.quantizer) for w in _weight_entries(model)}
    with _bypassed(classes, record):
        for x in _batches(model, data, max_samples):
            model(x, training=False)
    missing = sorted(set(keys.values()) - set(seen))
    if missing:
        raise ValueError(f"calibrate_ranges: quantizers {missing} of model {model.name!r} "
                         "saw no tensor on the calibration data; they are not on the path "
                         "from the model's inputs.")
    quantizers = {key: q for key, q, _ in entries}
    ranges = {key: _range(quantizers[key], *seen[key]) for key in seen}
    from mntk.quantization.transfer import load_quantizer_ranges
    load_quantizer_ranges(model, ranges, kernels=False)
    _set_kernel_ranges(model)
    return ranges


def _set_kernel_ranges(model):
    """tfmot's kernel quantizers take their kernel's current range (what their
    first training step assigns), so the calibrated model infers sensibly
    before any training."""
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers
    for w in _weight_entries(model):
        if isinstance(w.quantizer, quantizers.LastValueQuantizer):
            w.quantizer(w.weight, True, weights=w.variables)
