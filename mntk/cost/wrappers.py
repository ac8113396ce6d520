"""Reading tfmot wrappers: effective (pruned / fake-quantized) weights and bits.

Quantizer protocol (shared with `mntk.quantization`):
  * weights inside a `QuantizeWrapperV2` are read as the quantizer's output
    `quantizer(weight, training=False, weights=quantizer_vars)`, so sparsity,
    ternary and binary kernels are detected from the values inference uses;
  * bits of a tensor: `quantizer.cost_bits(quantizer_vars)` (a float, or one
    value per output channel) when the quantizer has it, else its `num_bits`;
    anything else is an error naming the quantizer class;
  * storage of a quantizer: `quantizer.cost_params(quantizer_vars)` 32-bit
    values when it has it, else every element of its variables at 32 bits.
`PruneLowMagnitude` weights are read as kernel * mask.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np

__all__ = ["WeightView", "Unwrapped", "unwrap", "quantizer_bits",
           "quantizer_param_count", "class_names"]


def class_names(obj) -> set:
    return {cls.__name__ for cls in type(obj).__mro__}


@dataclasses.dataclass
class WeightView:
    """A weight as inference sees it.

    values: the effective numpy values (masked, fake-quantized).
    bits: None for an unquantized float weight, else a float or an array with
      one entry per output channel.
    quantizer_param_bits: storage of the quantizer's own values (scales,
      ranges), 32 bits each.
    quantizer_reports_params: True when the quantizer said itself how many
      values it stores (`cost_params`), so a ternary kernel's two scales are
      already in `quantizer_param_bits`.
    block_shape: the (rows, cols) blocks of tfmot block sparsity, whose
      sparse encoding stores one mask bit per block.
    """
    name: str
    values: np.ndarray
    bits: Optional[object] = None
    quantizer_param_bits: float = 0.0
    quantizer_reports_params: bool = False
    block_shape: Optional[tuple] = None   # tfmot block sparsity (2-D kernels)


@dataclasses.dataclass
class Unwrapped:
    """A layer with its tfmot wrappers peeled off, plus what they contribute."""
    layer: object
    weights: Dict[str, WeightView]
    output_bits: Optional[float] = None      # bits of the quantized output tensor
    extra_param_bits: float = 0.0            # activation/output quantizer ranges
    quantized_bits: list = dataclasses.field(default_factory=list)  # (what, bits)


def _short_name(variable) -> str:
    return variable.name.split(":")[0].split("/")[-1]


def _numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _variables(quantizer_vars):
    if quantizer_vars is None:
        return []
    if isinstance(quantizer_vars, dict):
        items = list(quantizer_vars.values())
    elif isinstance(quantizer_vars, (list, tuple)):
        items = list(quantizer_vars)
    else:
        items = [quantizer_vars]
    return [v for v in items if hasattr(v, "shape")]


def quantizer_bits(quantizer, quantizer_vars, where: str):
    """Bits of the tensor `quantizer` produces: `cost_bits(vars)` or `num_bits`."""
    if hasattr(quantizer, "cost_bits"):
        bits = quantizer.cost_bits(quantizer_vars)
        bits = _numpy(bits).astype(np.float64)
        return float(bits) if bits.ndim == 0 else bits
    if getattr(quantizer, "num_bits", None) is not None:
        return float(quantizer.num_bits)
    raise TypeError(
        f"mntk.cost cannot tell the bits of quantizer {type(quantizer).__name__} "
        f"on {where}: it has neither a `cost_bits(quantizer_vars)` method nor a "
        "`num_bits` attribute. Add `cost_bits` to the quantizer (see "
        "mntk.cost.wrappers).")


def quantizer_param_count(quantizer, quantizer_vars) -> float:
    """32-bit values the quantizer keeps for inference."""
    if hasattr(quantizer, "cost_params"):
        return float(_numpy(quantizer.cost_params(quantizer_vars)))
    return float(sum(int(np.prod(v.shape)) for v in _variables(quantizer_vars)))


def _is_no_quantizer(quantizer) -> bool:
    return quantizer is None or "NoQuantizer" in class_names(quantizer)


def _max_bits(bits) -> float:
    return float(np.max(bits))


def unwrap(layer) -> Unwrapped:
    """Peel tfmot `PruneLowMagnitude` / `QuantizeWrapper` off `layer`."""
    names = class_names(layer)
    if "PruneLowMagnitude" in names:
        inner = unwrap(layer.layer)
        for weight, mask, _threshold in layer.pruning_vars:
            key = _short_name(weight)
            view = inner.weights.get(key)
            if view is None:
                continue
            view.values = view.values * _numpy(mask)
            block = tuple(int(d) for d in getattr(layer, "block_size", (1, 1)))
            if block != (1, 1):
                view.block_shape = block
        return inner
    if "QuantizeWrapper" in names:
        inner = unwrap(layer.layer)
        where = f"layer {layer.name!r}"
        for weight, quantizer, qvars in getattr(layer, "_weight_vars", []):
            key = _short_name(weight)
            if _is_no_quantizer(quantizer):
                continue
            values = _numpy(quantizer(weight, False, weights=qvars))
            bits = quantizer_bits(quantizer, qvars, f"weight {key!r} of {where}")
            inner.quantized_bits.append((f"weight {key!r} of {where}", _max_bits(bits)))
            inner.weights[key] = WeightView(
                key, values, bits, 32.0 * quantizer_param_count(quantizer, qvars),
                hasattr(quantizer, "cost_params"))
        for activation in getattr(layer, "_quantize_activations", []):
            quantizer = activation.quantizer
            if _is_no_quantizer(quantizer):
                continue
            for attr in ("_pre_activation_vars", "_post_activation_vars"):
                qvars = getattr(activation, attr, None)
                if qvars is None:
                    continue
                inner.extra_param_bits += 32.0 * quantizer_param_count(quantizer, qvars)
                bits = quantizer_bits(quantizer, qvars, f"the activation of {where}")
                inner.quantized_bits.append((f"activation of {where}", _max_bits(bits)))
                if attr == "_post_activation_vars":
                    inner.output_bits = _max_bits(bits)
        quantizers = list(getattr(layer, "_output_quantizers", []) or [])
        if quantizers and not _is_no_quantizer(quantizers[0]):
            qvars = getattr(layer, "_output_quantizer_vars", None)
            inner.extra_param_bits += 32.0 * quantizer_param_count(quantizers[0], qvars)
            bits = _max_bits(quantizer_bits(quantizers[0], qvars, f"the output of {where}"))
            inner.quantized_bits.append((f"output of {where}", bits))
            inner.output_bits = bits
        return inner
    if "QuantizeLayer" in names:
        unwrapped = Unwrapped(layer, {})
        quantizer = getattr(layer, "quantizer", None)
        if not _is_no_quantizer(quantizer):
            qvars = getattr(layer, "quantizer_vars", None)
            where = f"quantize layer {layer.name!r}"
            unwrapped.extra_param_bits = 32.0 * quantizer_param_count(quantizer, qvars)
            unwrapped.output_bits = _max_bits(quantizer_bits(quantizer, qvars, where))
            unwrapped.quantized_bits.append((where, unwrapped.output_bits))
        return unwrapped
    weights = {}
    for variable in layer.weights:
        key = _short_name(variable)
        weights.setdefault(key, WeightView(key, _numpy(variable)))
    return Unwrapped(layer, weights)
