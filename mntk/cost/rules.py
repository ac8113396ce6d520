"""Per-layer MicroNet counting rules.

Formulas (MicroNet Challenge counter; k = kernel, N = output elements,
nnz_c = nonzeros feeding output channel c, S = N / channels):
  conv / depthwise / dense: mults sum_c nnz_c * S,
    adds sum_c (nnz_c - 1) * S, + N with a bias (or a folded BatchNorm);
  ternary kernel {-a, 0, +b} (TTQ, Zhu et al. ICLR 2017): 2 mults per output
    element, (nnz_c - 1) adds, storage 1 sign bit per nonzero + mask + scales;
  binary kernel {-a_c, +a_c} per output channel: each +-1 product at the
    input's bits, + 1 scale mult per output element, 1 bit per weight + scales;
  storage of a kernel: the cheaper of dense (sum_c n_c * b_c) and sparse
    (sum_c nnz_c * b_c + a 1-bit mask over the tensor), see
    `mntk.cost.storage`; the multiplies are those of the stored values.
    Biases are never sparse.
  activations per element (mults, adds): see ACTIVATION_COSTS.
A rule is `fn(layer, ctx) -> list of LayerCost`; add one for a custom layer
with `mntk.cost.register_rule(MyLayer, fn)` (see `CostContext`).
"""
import math
from typing import Callable, Dict, List, Optional

import numpy as np

from mntk.compat import keras
from mntk.cost.report import LayerCost
from mntk.cost.storage import tensor_storage
from mntk.cost.wrappers import class_names

__all__ = ["ACTIVATION_COSTS", "CostContext", "register_rule", "rule_for",
           "activation_name", "PASS_THROUGH", "kernel_row"]

# (mults, adds) per output element.
ACTIVATION_COSTS = {
    "linear": (0, 0), "relu": (1, 0), "relu6": (2, 0), "sigmoid": (2, 1),
    "tanh": (2, 1), "swish": (3, 1), "silu": (3, 1), "hard_sigmoid": (3, 1),
    "hard_swish": (4, 1), "hard_silu": (4, 1), "softmax": (2, 1),
}
_ACTIVATION_ALIASES = {"NoOpActivation": "linear", "hardswish": "hard_swish",
                       "hard_sigmoid_v2": "hard_sigmoid"}

_RULES: Dict[type, Callable] = {}
_NAME_RULES: Dict[str, Callable] = {}
# Layers whose output holds the input's values (so keeps its bits).
PASS_THROUGH: set = set()


def register_rule(layer_class, fn: Callable, *, passes_bits: bool = False):
    """Count `layer_class` (and its subclasses) with `fn(layer, ctx)`.

    `fn` returns a list of `LayerCost` rows (empty for a free layer); build
    them with `ctx.row(...)`, `ctx.elementwise(...)` or `ctx.kernel(...)`.
    `passes_bits=True` says the layer's output keeps its input's bits (a
    reshape, a max): quantized inputs stay quantized through it.
    A registered rule overrides the built-in one for that class.
    """
    if isinstance(layer_class, str):
        _NAME_RULES[layer_class] = fn
    else:
        _RULES[layer_class] = fn
    if passes_bits:
        PASS_THROUGH.add(layer_class if isinstance(layer_class, str) else layer_class.__name__)
    return fn


def rule_for(layer) -> Optional[Callable]:
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
        if cls.__name__ in _NAME_RULES:
            return _NAME_RULES[cls.__name__]
    return None


def passes_bits(layer) -> bool:
    return bool(class_names(layer) & PASS_THROUGH)


def activation_name(fn, where: str) -> str:
    """Canonical name of a Keras activation (function, name or tfmot wrapper)."""
    if fn is None:
        return "linear"
    if hasattr(fn, "quantizer") and hasattr(fn, "activation"):
        fn = fn.activation      # tfmot's QuantizeAwareActivation wraps the real one
    if isinstance(fn, str):
        name = fn
    else:
        name = getattr(fn, "__name__", None) or type(fn).__name__
    name = _ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATION_COSTS:
        raise ValueError(
            f"mntk.cost has no MicroNet cost for activation {name!r} of {where}; "
            f"known: {sorted(ACTIVATION_COSTS)}. Use one of those, or wrap it in "
            "a custom layer and count it with mntk.cost.register_rule(...).")
    return name


def _prod(shape) -> int:
    return int(math.prod(int(d) for d in shape))


class CostContext:
    """What a rule knows about one call of a layer.

    Attributes: `name` (row name), `layer_name`, `input_shapes` /
    `output_shapes` (tuples without batch), `input_bits` (bits of each input
    tensor), `accumulator_bits`, `freebie`, `float_bits` (bits of an
    unquantized parameter: 32, or 16 with the freebie), `is_model_output`,
    `folded_bn` (a following BatchNorm is folded into this layer's bias),
    `weights` (dict short name -> WeightView, effective values), `profile`
    (the `CountingProfile` in force; rules that depend on conventions read
    it, e.g. `activation_cost`, `profile.residual_adds`).
    """

    def __init__(self, *, name, layer_name, unwrapped, input_shapes, output_shapes,
                 input_bits, accumulator_bits, freebie, is_model_output, folded_bn,
                 profile=None):
        self.name = name
        self.layer_name = layer_name
        self.unwrapped = unwrapped
        self.weights = unwrapped.weights
        self.input_shapes = input_shapes
        self.output_shapes = output_shapes
        self.input_bits = input_bits
        self.accumulator_bits = float(accumulator_bits)
        self.freebie = freebie
        self.float_bits = 16.0 if freebie else 32.0
        self.is_model_output = is_model_output
        self.folded_bn = folded_bn
        if profile is None:
            from mntk.cost.profiles import get_profile
            profile = get_profile("official")
        self.profile = profile

    def activation_cost(self, name: str):
        """(mults, adds) per element of activation `name` under the profile."""
        return tuple(self.profile.activation_costs.get(name, ACTIVATION_COSTS[name]))

    @property
    def output_shape(self):
        return self.output_shapes[0]

    @property
    def output_elements(self) -> int:
        return _prod(self.output_shapes[0])

    def mult_bits(self, *bits) -> float:
        """A multiply counts max(operand bits); 16 under the freebie."""
        if self.freebie:
            return 16.0
        return float(max([32.0] if not bits else bits))

    def weight(self, key: str):
        if key not in self.weights:
            raise ValueError(f"layer {self.layer_name!r} has no weight {key!r}; "
                             f"it has {sorted(self.weights)}.")
        return self.weights[key]

    def row(self, kind, *, suffix="", shape=None, **fields) -> LayerCost:
        return LayerCost(name=self.name + suffix, layer=self.layer_name, kind=kind,
                         shape=tuple(self.output_shape if shape is None else shape),
                         **fields)

    def elementwise(self, kind, mults_per_element, adds_per_element, *,
                    elements=None, operand_bits=None, suffix="", param_bits=0.0,
                    shape=None) -> LayerCost:
        """A row of `mults/adds_per_element` ops on each output element."""
        elements = self.output_elements if elements is None else elements
        bits = self.mult_bits(*(self.input_bits if operand_bits is None else operand_bits))
        return self.row(kind, suffix=suffix, shape=shape, bits=bits, param_bits=param_bits,
                        mult_terms=[(mults_per_element * elements, bits)] if mults_per_element else [],
                        add_terms=([(adds_per_element * elements, self.accumulator_bits)]
                                   if adds_per_element else []))

    def kernel(self, kind, view, channels, spatial, *, suffix="", shape=None,
               bias=None, add_bias=False, input_bits=None) -> LayerCost:
        return kernel_row(self, kind, view, channels, spatial, suffix=suffix, shape=shape,
                          bias=bias, add_bias=add_bias, input_bits=input_bits)

    def activation(self, fn, *, pre_bits=32.0) -> List[LayerCost]:
        """Rows for a fused activation applied to this layer's output."""
        name = activation_name(fn, f"layer {self.layer_name!r}")
        if name == "linear" or (name == "softmax" and self.is_model_output):
            return []
        mults, adds = self.activation_cost(name)
        return [self.elementwise(f"act:{name}", mults, adds, operand_bits=[pre_bits],
                                 suffix="/activation")]


def _sign_scheme(values: np.ndarray) -> str:
    """'ternary', 'binary' or 'dense' from a (rows, channels) kernel's values.

    ternary: the whole tensor holds {-a, 0, +b} (TTQ's per-layer Wn, Wp);
    binary: every output channel c holds only {-a_c, +a_c}, both signs in
      the tensor (XNOR-style
      per-channel scales, `BinaryScheme`), zeros allowed where pruned; a
      tensor-wide {-a, 0, +a} with zeros is counted as ternary (the cheaper
      of the two readings of the same values).
    """
    rows, _ = values.shape
    if values.size <= 2 or rows < 2:
        return "dense"
    flat = values.ravel()
    if np.unique(flat[:64]).size <= 3:
        nonzero = flat[flat != 0]
        pos, neg = nonzero[nonzero > 0], nonzero[nonzero < 0]
        # A repeated value (3+ nonzeros on 2 levels): a float kernel pruned to
        # one positive and one negative weight is not a ternary one.
        if (pos.size and neg.size and nonzero.size >= 3
                and pos.min() == pos.max() and neg.min() == neg.max()):
            if nonzero.size == flat.size and pos[0] == -neg[0]:
                return "binary"
            return "ternary"
    magnitude = np.abs(values)
    if np.unique(magnitude[:, 0]).size > 2:       # quick reject of float kernels
        return "dense"
    largest = magnitude.max(axis=0)
    smallest = np.where(magnitude > 0, magnitude, np.inf).min(axis=0)
    nnz_c = np.count_nonzero(values, axis=0)
    # Both signs somewhere: a constant (all-ones) float init is not binary.
    if (np.all(largest > 0) and np.all(largest == smallest) and nnz_c.max() >= 2
            and values.min() < 0 < values.max()):
        return "binary"
    return "dense"


def _per_channel(bits, channels: int, where: str) -> np.ndarray:
    bits = np.asarray(bits, dtype=np.float64)
    if bits.ndim == 0:
        return np.full(channels, float(bits))
    if bits.size != channels:
        raise ValueError(
            f"{where}: the quantizer's cost_bits gave {bits.size} values, but the "
            f"kernel has {channels} output channels; return a scalar or one value "
            "per output channel.")
    return bits.reshape(-1)


def kernel_row(ctx, kind, view, channels, spatial, *, suffix="", shape=None,
               bias=None, add_bias=False, input_bits=None) -> LayerCost:
    """The row of a kernel op: `channels` outputs, each at `spatial` positions.

    `view.values` reshaped to (-1, channels) holds each output channel's
    weights in a column. Storage is the cheaper of the dense and sparse
    encodings (`mntk.cost.storage`); the multiplies are the stored values'
    (all of them when dense, the nonzeros when sparse). `bias` (a WeightView)
    or `add_bias` (a BatchNorm folded into a bias-less layer) adds one dense
    value per channel and one add per output element.

    Sign kernels: ternary (TTQ) counts 2 scale mults per output and
    (nnz_c - 1) adds; binary counts each +-1 product at the input's bits (the
    1/32 rate only when the input itself is 1-bit: a +-1 times a b-bit
    two's-complement value is a b-bit op) plus one scale mult per output.
    """
    where = f"layer {ctx.layer_name!r}"
    values = view.values.reshape(-1, channels)
    size = int(values.size)
    nnz_total = int(np.count_nonzero(values))
    scheme = _sign_scheme(values) if nnz_total else "dense"
    in_bits = list(ctx.input_bits if input_bits is None else input_bits)
    param_bits = float(view.quantizer_param_bits)
    force = "sparse" if ctx.profile.storage == "sparse" else None
    if scheme != "dense" and ctx.freebie:
        raise ValueError(
            f"freebie=True refused: {where} has a {scheme} kernel (below 16 bits); "
            "the MicroNet freebie is for unquantized models only. Use freebie=False.")
    mult_terms = []
    if scheme in ("ternary", "binary"):
        bits_c = np.ones(channels)
        # A sign kernel with zeros needs 3 levels: dense would take 2 bits a
        # value, never less than 1 sign bit per nonzero + the mask.
        store = tensor_storage(values, bits_c,
                               force="sparse" if nnz_total < size else force)
        param_bits += store.param_bits
        if scheme == "ternary":
            if view.bits is None:
                param_bits += 64.0                       # Wp, Wn at 32 bits
            live = int(np.count_nonzero(store.stored))
            mult_terms.append((2 * live * spatial, ctx.mult_bits(32.0)))
        else:
            if view.bits is None:                        # a raw +-a float kernel
                scales = np.unique(np.abs(values).max(axis=0)).size
                param_bits += 32.0 * (1 if scales == 1 else channels)
            mult_terms.append((int(store.stored.sum()) * spatial,
                               float(max(in_bits)) if in_bits else 32.0))
            mult_terms.append((channels * spatial, ctx.mult_bits(32.0)))
    else:
        bits_c = (np.full(channels, ctx.float_bits) if view.bits is None
                  else _per_channel(view.bits, channels, where))
        if view.bits is not None and ctx.freebie and bits_c.min() < 16:
            raise ValueError(f"freebie=True refused: {where} is quantized to "
                             f"{bits_c.min():g} bits (< 16). Use freebie=False.")
        store = tensor_storage(values, bits_c, getattr(view, "block_shape", None), force)
        param_bits += store.param_bits
        by_bits: Dict[float, int] = {}
        for count, b in zip(store.stored.tolist(), bits_c.tolist()):
            key = ctx.mult_bits(b, *in_bits)
            by_bits[key] = by_bits.get(key, 0) + count * spatial
        mult_terms.extend((count, b) for b, count in sorted(by_bits.items()) if count)
    add_counts = int(np.maximum(store.stored - 1, 0).sum()) * spatial
    add_terms = [(add_counts, ctx.accumulator_bits)] if add_counts else []
    if bias is not None or add_bias:
        bias_bits = ctx.float_bits
        if bias is not None:
            if bias.bits is not None:
                bias_bits = float(np.max(bias.bits))
            param_bits += float(bias.quantizer_param_bits)
        param_bits += channels * bias_bits
        add_terms.append((channels * spatial, ctx.accumulator_bits))
    if ctx.folded_bn:
        kind += "+bn"
    if scheme != "dense":
        kind += ":" + scheme
    return ctx.row(kind, suffix=suffix, shape=shape, bits=float(np.mean(bits_c)),
                   sparsity=1.0 - nnz_total / size, param_bits=param_bits,
                   mult_terms=mult_terms, add_terms=add_terms,
                   encoding=store.encoding, channel_bits=bits_c,
                   channel_values=store.stored, spatial=int(spatial),
                   input_bits=float(max(in_bits)) if in_bits else 32.0)


def free_rule(layer, ctx):
    return []


def unsupported_rule(layer, ctx):
    raise ValueError(
        f"mntk.cost has no MicroNet rule for layer {ctx.layer_name!r} "
        f"({type(layer).__name__}); count it with "
        f"mntk.cost.register_rule({type(layer).__name__}, fn) where "
        "fn(layer, ctx) returns a list of rows (see mntk.cost.rules).")


# Layers that compute nothing at inference, or only move values.
for _cls in (keras.layers.InputLayer, keras.layers.Reshape, keras.layers.Flatten,
             keras.layers.Dropout, keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
             keras.layers.ZeroPadding3D, keras.layers.Concatenate, keras.layers.Permute,
             keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D,
             keras.layers.GaussianNoise, keras.layers.GaussianDropout,
             keras.layers.AlphaDropout, keras.layers.ActivityRegularization,
             keras.layers.Identity):
    register_rule(_cls, free_rule, passes_bits=True)
for _cls in (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Conv3DTranspose):
    register_rule(_cls, unsupported_rule)
