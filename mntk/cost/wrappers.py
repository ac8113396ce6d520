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
`PruneLowMagnitude` weights are read as kernel * mask. tfmot's internals are
read only through `mntk.wrapped`.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np

from mntk import wrapped

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


def quantizer_bits(quantizer, quantizer_vars, where: str):
    """Bits of the tensor `quantizer` produces: `cost_bits(vars)` or `num_bits`
    (`mntk.wrapped.quantizer_bits`, with the error saying it is mntk.cost's)."""
    try:
        return wrapped.quantizer_bits(quantizer, quantizer_vars, where)
    except TypeError as error:
        raise TypeError(f"mntk.cost {error}") from None


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


def quantizer_param_count(quantizer, quantizer_vars) -> float:
    """32-bit values the quantizer keeps for inference."""
    if hasattr(quantizer, "cost_params"):
        return float(np.asarray(quantizer.cost_params(quantizer_vars)))
    return float(sum(int(np.prod(v.shape)) for v in _variables(quantizer_vars)))


def _max_bits(bits) -> float:
    return float(np.max(bits))


def _add_tensor_quantizer(unwrapped, quantizer, variables, what, sets_output):
    unwrapped.extra_param_bits += 32.0 * quantizer_param_count(quantizer, variables)
    bits = _max_bits(quantizer_bits(quantizer, variables, what))
    unwrapped.quantized_bits.append((what, bits))
    if sets_output:
        unwrapped.output_bits = bits


def unwrap(layer) -> Unwrapped:
    """Peel tfmot `PruneLowMagnitude` / `QuantizeWrapper` off `layer`
    (through `mntk.wrapped`, the one reader of tfmot's internals)."""
    if wrapped.is_prune_wrapper(layer):
        inner = unwrap(layer.layer)
        block = tuple(int(d) for d in getattr(layer, "block_size", (1, 1)))
        for key, mask in wrapped.masks(layer).items():
            view = inner.weights.get(key)
            if view is None:
                continue
            view.values = view.values * mask
            if block != (1, 1):
                view.block_shape = block
        return inner
    if wrapped.is_quantize_wrapper(layer):
        inner = unwrap(layer.layer)
        where = f"layer {layer.name!r}"
        for weight in wrapped.weight_quantizers(layer):
            if wrapped.is_no_quantizer(weight.quantizer):
                continue
            key = weight.name
            bits = quantizer_bits(weight.quantizer, weight.variables,
                                  f"weight {key!r} of {where}")
            inner.quantized_bits.append((f"weight {key!r} of {where}", _max_bits(bits)))
            inner.weights[key] = WeightView(
                key, weight.effective(), bits,
                32.0 * quantizer_param_count(weight.quantizer, weight.variables),
                hasattr(weight.quantizer, "cost_params"))
        for tensor in wrapped.activation_quantizers(layer):
            if not wrapped.is_no_quantizer(tensor.quantizer):
                _add_tensor_quantizer(inner, tensor.quantizer, tensor.variables,
                                      f"activation of {where}",
                                      tensor.kind == "post_activation")
        for tensor in wrapped.output_quantizers(layer):
            if not wrapped.is_no_quantizer(tensor.quantizer):
                _add_tensor_quantizer(inner, tensor.quantizer, tensor.variables,
                                      f"output of {where}", True)
        return inner
    if wrapped.is_quantize_layer(layer):
        unwrapped = Unwrapped(layer, {})
        tensor = wrapped.input_quantizer(layer)
        if tensor is not None:
            _add_tensor_quantizer(unwrapped, tensor.quantizer, tensor.variables,
                                  f"quantize layer {layer.name!r}", True)
        return unwrapped
    weights = {}
    for variable in layer.weights:
        key = wrapped.short_name(variable)
        weights.setdefault(key, WeightView(key, np.asarray(variable)))
    return Unwrapped(layer, weights)
