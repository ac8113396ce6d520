"""Start a learned-precision model from an 8-bit QAT model's activation ranges.

Texas-EIC's adjustable stage started from its 8-bit QAT checkpoint's weights
AND ranges (README:176-204). ``quantize(model, "int8")`` and
``quantize(model, LearnedPrecisionScheme())`` place their activation
quantizers identically (one layout and registry, ``schemes.py``), so each
learned activation quantizer has an int8 twin at the same layer and kind:

- int8 (tfmot ``MovingAverageQuantizer``): the range [min, max] it learned
  as a moving average;
- learned: base range [lo0, hi0] (``lo``, ``hi``), scale alpha, shift beta;
  its range is [lo0 + beta (hi0 - lo0), lo0 + (beta + alpha) (hi0 - lo0)].

``load_activation_ranges`` sets lo0 = min, hi0 = max, alpha = 1, beta = 0
and marks the quantizer calibrated, so its first batch does not re-calibrate
it: at 8 bits its grid is then the int8 one (2^8 levels over [min, max], zero
nudged onto the grid, as ``fake_quant_with_min_max_vars`` does).

Kernels: tfmot's 8-bit kernel grid is symmetric and narrow, [-127, 127] *
r / 127 with r = max|w| per output channel as of the last training step
(``LastValueQuantizer``: its stored min/max lag the final update by one
step); the learned kernel grid at 8 bits is the same [-127, 127] * r_c / 127,
so ``load_quantizer_ranges`` sets r_c = max(|min|, |max|) of the twin (one
range for every channel where tfmot keeps one per tensor: depthwise kernels).
"""
from typing import Dict, List, Tuple

import numpy as np

from mntk import wrapped

__all__ = ["quantizer_ranges", "load_quantizer_ranges"]


def _key_name(layer):
    """A wrapper's own name (``quant_<layer>``, fixed by the float model); a
    ``QuantizeLayer`` (auto-named, ``quantize_layer_3``) by the layer it reads."""
    if wrapped.is_quantize_layer(layer):
        inbound = layer._inbound_nodes[0].inbound_layers
        inbound = inbound[0] if isinstance(inbound, (list, tuple)) else inbound
        return f"quantize({inbound.name})"
    return layer.name


def _activation_entries(model):
    """(key, quantizer, variables) of every activation/output/input quantizer."""
    for layer in model.layers:
        if wrapped.is_quantize_wrapper(layer):
            found = wrapped.activation_quantizers(layer) + wrapped.output_quantizers(layer)
        elif wrapped.is_quantize_layer(layer):
            found = [q for q in [wrapped.input_quantizer(layer)] if q is not None]
        else:
            continue
        for q in found:
            if q.variables and not wrapped.is_no_quantizer(q.quantizer):
                yield f"{_key_name(layer)}/{q.kind}", q.quantizer, q.variables


def _is_learned(quantizer):
    from mntk.quantization.learned import LearnedPrecisionActivationQuantizer
    return isinstance(quantizer, LearnedPrecisionActivationQuantizer)


def quantizer_ranges(model) -> Dict[str, Tuple]:
    """``"layer/kind" -> (min, max)`` of every activation quantizer of a QAT
    model (tfmot's ``min_var``/``max_var``, or a learned quantizer's current
    range), and ``"layer/weight:name" -> (mins, maxs)`` (per channel) of every
    tfmot kernel quantizer. JSON-ready (floats and lists of floats)."""
    out = {}
    for layer in model.layers:
        if not wrapped.is_quantize_wrapper(layer):
            continue
        for w in wrapped.weight_quantizers(layer):
            if w.variables and "min_var" in w.variables and "max_var" in w.variables:
                out[f"{layer.name}/weight:{w.name}"] = (
                    np.ravel(np.asarray(w.variables["min_var"], np.float64)).tolist(),
                    np.ravel(np.asarray(w.variables["max_var"], np.float64)).tolist())
    for key, quantizer, variables in _activation_entries(model):
        if _is_learned(quantizer):
            lo0, hi0 = (np.asarray(variables[k], np.float64) for k in ("lo", "hi"))
            alpha, beta = (np.asarray(variables[k], np.float64) for k in ("alpha", "beta"))
            width = hi0 - lo0
            # per-channel grids (per_channel=True): the union of the channels'
            # ranges, the one range per tensor that TFLite and tfmot hold
            out[key] = (float(np.min(lo0 + beta * width)),
                        float(np.max(lo0 + (beta + alpha) * width)))
        elif "min_var" in variables and "max_var" in variables:
            out[key] = (float(np.asarray(variables["min_var"])),
                        float(np.asarray(variables["max_var"])))
    return out


def _load_kernel_ranges(model, ranges, done, missing):
    from mntk.quantization.learned import LearnedPrecisionWeightQuantizer
    for layer in model.layers:
        if not wrapped.is_quantize_wrapper(layer):
            continue
        for w in wrapped.weight_quantizers(layer):
            if not isinstance(w.quantizer, LearnedPrecisionWeightQuantizer):
                continue
            key = f"{layer.name}/weight:{w.name}"
            if key not in ranges:
                missing.append(key)
                continue
            low, high = (np.asarray(v, np.float32) for v in ranges[key])
            r = np.maximum(np.abs(low), np.abs(high))
            target = w.variables["range"]
            if r.size == 1:  # tfmot's per-tensor depthwise/Dense range: every channel
                r = np.full(target.shape, float(r.reshape(())), np.float32)
            if r.size != int(np.prod(target.shape)):
                raise ValueError(f"load_quantizer_ranges: {key} has {r.size} ranges, the "
                                 f"learned quantizer {int(np.prod(target.shape))} channels; "
                                 "give the ranges of the int8 model of the same float model.")
            target.assign(np.maximum(r.reshape(target.shape), 1e-8))
            done.append(key)


def load_quantizer_ranges(model, ranges, kernels=True) -> List[str]:
    """Start every learned activation quantizer of ``model`` at ``ranges[key]``
    (and every tfmot 8-bit one, e.g. the input's, at the same range)
    and every learned kernel quantizer at its twin's r_c (from
    ``quantizer_ranges`` of the 8-bit QAT model made from the same float
    model). ``kernels=False`` leaves the kernels' ranges to the learned
    quantizers' own start, max|w| of the current weights (right when the
    weights were averaged after the QAT model last saw them: an EMA). Returns
    the keys set.

    Raises:
      ValueError: a learned quantizer has no range in ``ranges`` (the models
        were not made from the same float model), or a range does not hold 0.
    """
    done, missing = [], []
    for key, quantizer, variables in _activation_entries(model):
        fixed = "min_var" in variables and "max_var" in variables
        if not (_is_learned(quantizer) or fixed):
            continue
        if key not in ranges:
            missing.append(key)
            continue
        lo, hi = (float(v) for v in ranges[key])
        if not lo <= 0.0 < hi:
            raise ValueError(f"load_quantizer_ranges: range {key} = [{lo}, {hi}] does not "
                             "hold 0 (TFLite's zero point must be on the grid); give the "
                             "ranges of an 8-bit QAT model.")
        if fixed:  # a tfmot 8-bit quantizer (the input's, or learn_activations=False)
            variables["min_var"].assign(lo)
            variables["max_var"].assign(hi)
            done.append(key)
            continue
        # every channel of a per-channel quantizer starts from the tensor's range
        for name, value in (("lo", lo), ("hi", hi), ("alpha", 1.0), ("beta", 0.0)):
            variables[name].assign(np.full(variables[name].shape, value, np.float32))
        variables["initialized"].assign(1.0)
        done.append(key)
    if kernels:
        _load_kernel_ranges(model, ranges, done, missing)
    if missing:
        raise ValueError(f"load_quantizer_ranges: model {model.name!r} has activation "
                         f"quantizers with no range given: {missing}; the ranges "
                         f"hold {sorted(ranges)[:8]}... Quantize the same float model with "
                         "'int8' and LearnedPrecisionScheme() to get matching layers.")
    return done
