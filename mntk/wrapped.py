"""The one place that reads tfmot's wrapper internals.

tfmot (tensorflow-model-optimization 0.8.1) wraps layers two ways:

- pruning: ``PruneLowMagnitude(layer)`` keeps ``pruning_vars``, a list of
  ``(weight, mask, threshold)``; inference uses ``weight * mask``;
- quantization-aware training: ``QuantizeWrapperV2(layer)`` keeps
  ``_weight_vars`` ``[(latent weight, quantizer, quantizer_vars)]``,
  ``_quantize_activations`` (``QuantizeAwareActivation`` objects with
  ``quantizer`` and ``_pre_activation_vars`` / ``_post_activation_vars``),
  ``_output_quantizers`` with ``_output_quantizer_vars``; inference uses
  ``quantizer(weight, training=False, weights=quantizer_vars)``. A
  ``QuantizeLayer`` (not a wrapper) fake-quantizes a model input.

These attributes are private to tfmot, so every other mntk module goes through
this one: if tfmot renames them, this is the file to change. Wrappers are
detected one way, ``isinstance`` against tfmot's classes, looked up only once
tfmot is imported, so reading a plain model does not import tfmot.
"""
import dataclasses
import importlib
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from mntk.compat import keras

__all__ = [
    "is_prune_wrapper", "is_quantize_wrapper", "is_quantize_layer", "is_wrapper",
    "unwrap", "iter_layers", "is_pruned", "is_quantized", "prune_wrappers",
    "quantize_wrappers", "WeightQuantizer", "ActivationQuantizer",
    "weight_quantizers", "activation_quantizers", "output_quantizers",
    "input_quantizer", "all_quantizers", "is_no_quantizer", "latent_weights",
    "latent_variables", "masks", "effective_weights", "effective_kernel",
    "quantizer_bits", "short_name", "KERNEL_NAMES",
]

_TFMOT = "tensorflow_model_optimization.python.core."
#: The tfmot classes this module knows, by the module that defines them.
#: ``mntk.wrapped.PruneLowMagnitude`` etc. import tfmot on first access.
_CLASSES = {
    "PruneLowMagnitude": _TFMOT + "sparsity.keras.pruning_wrapper",
    "QuantizeWrapper": _TFMOT + "quantization.keras.quantize_wrapper",  # V2 subclasses it
    "QuantizeWrapperV2": _TFMOT + "quantization.keras.quantize_wrapper",
    "QuantizeLayer": _TFMOT + "quantization.keras.quantize_layer",
    "NoQuantizer": _TFMOT + "quantization.keras.quantizers",
}


def _loaded(name):
    """tfmot's class ``name``, or None while its module is not imported.

    No object can be an instance of a class that was never loaded, so looking
    for wrappers does not import tfmot (about as slow to import as TensorFlow);
    a model holding them has imported it already.
    """
    module = sys.modules.get(_CLASSES[name])
    return getattr(module, name, None)


def _isinstance(obj, name) -> bool:
    cls = _loaded(name)
    return cls is not None and isinstance(obj, cls)


def __getattr__(name):
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'mntk.wrapped' has no attribute {name!r}")


#: Kernel variable names, in the order ``effective_kernel`` looks for them.
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def is_prune_wrapper(layer) -> bool:
    """True for tfmot's ``PruneLowMagnitude``."""
    return _isinstance(layer, "PruneLowMagnitude")


def is_quantize_wrapper(layer) -> bool:
    """True for tfmot's ``QuantizeWrapper`` / ``QuantizeWrapperV2``."""
    return _isinstance(layer, "QuantizeWrapper")


def is_quantize_layer(layer) -> bool:
    """True for tfmot's ``QuantizeLayer`` (fake-quantizes a model input)."""
    return _isinstance(layer, "QuantizeLayer")


def is_wrapper(layer) -> bool:
    """True for a tfmot pruning or QAT wrapper (not ``QuantizeLayer``, which wraps nothing)."""
    return is_prune_wrapper(layer) or is_quantize_wrapper(layer)


def unwrap(layer):
    """The layer inside any chain of tfmot pruning / QAT wrappers (itself if none)."""
    while is_wrapper(layer):
        layer = layer.layer
    return layer


def iter_layers(model):
    """Every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)


def prune_wrappers(model) -> List[Any]:
    """The ``PruneLowMagnitude`` layers of ``model`` (nested models included)."""
    return [l for l in iter_layers(model) if is_prune_wrapper(l)]


def quantize_wrappers(model) -> List[Any]:
    """The ``QuantizeWrapper(V2)`` layers of ``model`` (nested models included)."""
    return [l for l in iter_layers(model) if is_quantize_wrapper(l)]


def is_pruned(model) -> bool:
    """True when ``model`` holds tfmot pruning wrappers (strip them for export)."""
    return bool(prune_wrappers(model))


def is_quantized(model) -> bool:
    """True when ``model`` is a tfmot quantization-aware model (QAT wrappers or
    ``QuantizeLayer``)."""
    return any(is_quantize_wrapper(l) or is_quantize_layer(l) for l in iter_layers(model))


def is_no_quantizer(quantizer) -> bool:
    """True for a missing quantizer or tfmot's ``NoQuantizer`` (leaves values float)."""
    return quantizer is None or _isinstance(quantizer, "NoQuantizer")


def short_name(variable) -> str:
    """'kernel' for a variable named 'model/conv/kernel:0'."""
    name = getattr(variable, "name", "") or ""
    return name.split(":")[0].split("/")[-1]


@dataclasses.dataclass
class WeightQuantizer:
    """One quantized weight of a QAT wrapper: the latent float variable, its
    quantizer and the quantizer's variables (scales, ranges, bits)."""
    weight: Any
    quantizer: Any
    variables: Any

    @property
    def name(self) -> str:
        return short_name(self.weight)

    def effective(self) -> np.ndarray:
        """The fake-quantized values inference uses, as numpy."""
        return np.asarray(self.quantizer(self.weight, False, weights=self.variables))


@dataclasses.dataclass
class ActivationQuantizer:
    """An activation or output quantizer of a QAT wrapper.

    kind: "pre_activation", "post_activation" or "output"; variables: the
    quantizer's variables for that tensor.
    """
    kind: str
    quantizer: Any
    variables: Any


def _check_quantize_wrapper(wrapper, what):
    if not is_quantize_wrapper(wrapper):
        raise TypeError(
            f"{what}: layer {getattr(wrapper, 'name', wrapper)!r} "
            f"({type(wrapper).__name__}) is not a tfmot QuantizeWrapper; pass a "
            "layer of a model made by mntk.quantization.quantize.")


def weight_quantizers(wrapper) -> List[WeightQuantizer]:
    """The quantized weights of a QAT wrapper (tfmot's ``_weight_vars``)."""
    _check_quantize_wrapper(wrapper, "weight_quantizers")
    return [WeightQuantizer(w, q, v) for w, q, v in getattr(wrapper, "_weight_vars", [])]


def activation_quantizers(wrapper) -> List[ActivationQuantizer]:
    """Activation quantizers of a QAT wrapper (``_quantize_activations``), one
    entry per quantized tensor (before and/or after the activation function)."""
    _check_quantize_wrapper(wrapper, "activation_quantizers")
    out = []
    for activation in getattr(wrapper, "_quantize_activations", []):
        for kind in ("pre_activation", "post_activation"):
            variables = getattr(activation, f"_{kind}_vars", None)
            if variables is not None:
                out.append(ActivationQuantizer(kind, activation.quantizer, variables))
    return out


def output_quantizers(wrapper) -> List[ActivationQuantizer]:
    """The output quantizer of a QAT wrapper (``_output_quantizers``; tfmot
    uses only the first), as a list of zero or one entries."""
    _check_quantize_wrapper(wrapper, "output_quantizers")
    quantizers = list(getattr(wrapper, "_output_quantizers", None) or [])
    if not quantizers:
        return []
    return [ActivationQuantizer("output", quantizers[0],
                                getattr(wrapper, "_output_quantizer_vars", None))]


def input_quantizer(layer) -> Optional[ActivationQuantizer]:
    """The quantizer of a ``QuantizeLayer`` (None when it quantizes nothing)."""
    if not is_quantize_layer(layer):
        raise TypeError(f"input_quantizer: layer {layer.name!r} ({type(layer).__name__}) "
                        "is not a tfmot QuantizeLayer.")
    quantizer = getattr(layer, "quantizer", None)
    if is_no_quantizer(quantizer):
        return None
    return ActivationQuantizer("input", quantizer, getattr(layer, "quantizer_vars", None))


def all_quantizers(wrapper) -> list:
    """Every quantizer object of a QAT wrapper: weights, activations, output."""
    found = [w.quantizer for w in weight_quantizers(wrapper)]
    found += [a.quantizer for a in getattr(wrapper, "_quantize_activations", [])]
    found += [a.quantizer for a in output_quantizers(wrapper)]
    return found


def latent_weights(wrapper) -> Dict[str, Any]:
    """{short name: latent float variable} of the weights a QAT wrapper quantizes.

    tfmot's QuantizeWrapper replaces ``inner.kernel`` by the fake-quantized
    tensor on call, so the latent variable is only reachable from here.
    """
    return {w.name: w.weight for w in weight_quantizers(wrapper)}


def latent_variables(layer) -> list:
    """Every float variable of ``layer`` through its wrappers, latent QAT kernels
    included (once each, QAT latents first), without the wrappers' own state
    (masks, thresholds, step counters, quantizer ranges)."""
    found, seen = [], set()
    current = layer
    while is_wrapper(current):
        if is_quantize_wrapper(current):
            for w in weight_quantizers(current):
                if id(w.weight) not in seen:
                    seen.add(id(w.weight))
                    found.append(w.weight)
        current = current.layer
    for variable in current.weights:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def masks(wrapper) -> Dict[str, np.ndarray]:
    """{weight short name: pruning mask as numpy} of a ``PruneLowMagnitude``."""
    if not is_prune_wrapper(wrapper):
        raise TypeError(f"masks: layer {wrapper.name!r} ({type(wrapper).__name__}) is "
                        "not a tfmot PruneLowMagnitude wrapper.")
    return {short_name(w): np.asarray(m) for w, m, _ in wrapper.pruning_vars}


def effective_weights(layer) -> Dict[str, np.ndarray]:
    """{short name: numpy values inference uses} of ``layer``'s weights.

    Pruned weights are ``weight * mask``; QAT weights are the quantizer's output
    ``quantizer(weight, training=False, weights=vars)``; other weights are read
    as they are. Wrappers' own state (masks, step counters, quantizer ranges)
    is not listed.
    """
    if is_prune_wrapper(layer):
        inner = effective_weights(layer.layer)
        for name, mask in masks(layer).items():
            if name in inner:
                inner[name] = inner[name] * mask
        return inner
    if is_quantize_wrapper(layer):
        inner = effective_weights(layer.layer)
        for w in weight_quantizers(layer):
            inner[w.name] = (np.asarray(w.weight) if is_no_quantizer(w.quantizer)
                             else w.effective())
        return inner
    out = {}
    for variable in layer.weights:
        out.setdefault(short_name(variable), np.asarray(variable))
    return out


def effective_kernel(layer) -> Optional[np.ndarray]:
    """The kernel inference uses (see ``effective_weights``), or None for a
    layer without one. A separable conv gives its depthwise kernel."""
    weights = effective_weights(layer)
    for name in KERNEL_NAMES:
        if name in weights:
            return weights[name]
    return None


def _numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def quantizer_bits(quantizer, variables, where: str = "a tensor"):
    """Bits of the tensor ``quantizer`` produces.

    ``quantizer.cost_bits(variables)`` when it has it (mntk's quantizers: a
    float, or one value per output channel for learned precision), else its
    ``num_bits`` (tfmot's quantizers). Returns a float or a float64 array.
    """
    if hasattr(quantizer, "cost_bits"):
        bits = _numpy(quantizer.cost_bits(variables)).astype(np.float64)
        return float(bits) if bits.ndim == 0 else bits
    if getattr(quantizer, "num_bits", None) is not None:
        return float(quantizer.num_bits)
    raise TypeError(
        f"cannot tell the bits of quantizer {type(quantizer).__name__} on {where}: "
        "it has neither a `cost_bits(quantizer_vars)` method nor a `num_bits` "
        "attribute. Give the quantizer a `cost_bits` method (see mntk.wrapped).")
