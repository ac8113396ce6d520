"""Walks a functional Keras model and counts it by the MicroNet rules.

The graph is flattened (nested functional models are counted layer by
layer), tfmot wrappers are peeled (`wrappers.unwrap`), each call of a layer is
counted by its rule (`rules`, `layer_rules`) with its real output shapes, a
BatchNorm directly after a conv/depthwise/dense with a linear output is folded
into that layer's bias, and every row is tagged with the first model output
that needs it (for early-exit expectations).
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras
from mntk.cost import layer_rules  # noqa: F401  (registers the built-in rules)
from mntk.cost.profiles import get_profile
from mntk.cost.report import CostReport, is_finite_number
from mntk.cost.rules import (CostContext, activation_name, passes_bits, rule_for,
                             unsupported_rule)
from mntk import wrapped
from mntk.cost.wrappers import unwrap

__all__ = ["estimate", "layer_rows", "flatten_graph", "PROGRESS_MIN_LAYERS"]

PROGRESS_MIN_LAYERS = 200  # show a progress bar from this many layer calls on


@dataclasses.dataclass
class _Call:
    """One call of a (non-model) layer in the flattened graph."""
    layer: object
    inputs: List[tuple]         # tensor keys
    outputs: List[tuple]
    output_shapes: List[tuple]  # static shapes of the call's outputs
    path: str                   # enclosing nested models, "outer/inner/"


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and getattr(model, "_is_graph_network", False)


def flatten_graph(model, input_keys=None, path="", calls=None, alias=None, scopes=None):
    """Calls of every layer in topological order, with nested models expanded.

    A tensor is keyed by (scope, id of its KerasTensor), scope counting the
    walks of (nested) models, so a model called twice gets distinct keys; a
    nested model's inputs and outputs are aliased to the outer tensors.
    Returns (calls, output_keys).
    """
    calls = [] if calls is None else calls
    alias = {} if alias is None else alias
    scopes = [0] if scopes is None else scopes
    scope = scopes[0]
    scopes[0] += 1

    def key(t):
        return alias.get((scope, id(t)), (scope, id(t)))

    if input_keys is not None:
        for tensor, outer in zip(model.inputs, input_keys):
            alias[(scope, id(tensor))] = outer
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            inputs = [key(t) for t in node.keras_inputs]
            out_tensors = tf.nest.flatten(node.outputs)
            outputs = [(scope, id(t)) for t in out_tensors]
            if isinstance(layer, keras.Model):
                if not _is_functional(layer):
                    raise TypeError(
                        f"mntk.cost cannot walk nested model {layer.name!r} "
                        f"({type(layer).__name__}): only functional/Sequential models "
                        "have a graph. Rebuild it with keras.Input, or register a rule "
                        "for its class with mntk.cost.register_rule.")
                _, inner_outputs = flatten_graph(layer, inputs, f"{path}{layer.name}/",
                                                 calls, alias, scopes)
                for outer, inner in zip(outputs, inner_outputs):
                    alias[outer] = inner
                continue
            calls.append(_Call(layer, inputs, outputs,
                               [_shape_tuple(t.shape) for t in out_tensors], path))
    output_keys = [key(t) for t in tf.nest.flatten(model.outputs)]
    return calls, output_keys


def _shape_tuple(shape) -> tuple:
    return tuple(None if d is None else int(d) for d in tf.TensorShape(shape).as_list())


def _propagate_shapes(model, calls, input_shape) -> Dict[int, tuple]:
    """Output shapes of every call from `input_shape` (batch dimension dropped)."""
    shapes_in = input_shape
    if len(model.inputs) == 1 and (not shapes_in or not isinstance(shapes_in[0], (tuple, list))):
        shapes_in = [shapes_in]
    if len(shapes_in) != len(model.inputs):
        raise ValueError(f"input_shape gives {len(shapes_in)} shapes for a model with "
                         f"{len(model.inputs)} inputs; give one shape (no batch "
                         "dimension) per input.")
    shapes = {(0, id(t)): (None,) + tuple(int(d) for d in s) for t, s in zip(model.inputs, shapes_in)}
    for call in calls:
        layer = call.layer
        layer = wrapped.unwrap(layer)
        in_shapes = [shapes[k] for k in call.inputs]
        arg = in_shapes[0] if len(in_shapes) == 1 else in_shapes
        try:
            out = layer.compute_output_shape(arg)
        except Exception as error:  # re-raised with the layer named
            raise ValueError(
                f"mntk.cost could not infer the output shape of layer {layer.name!r} "
                f"({type(layer).__name__}) from input shape {arg}: {error}") from error
        outs = out if isinstance(out, (list, tuple)) and out and not isinstance(
            out[0], (int, type(None))) else [out]
        for k, s in zip(call.outputs, outs):
            shapes[k] = _shape_tuple(s)
    return shapes


def _static_shapes(model, calls) -> Dict[tuple, tuple]:
    shapes = {(0, id(t)): _shape_tuple(t.shape) for t in model.inputs}
    for call in calls:
        shapes.update(zip(call.outputs, call.output_shapes))
    return shapes


def _check_known(shape, call, what):
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"layer {call.layer.name!r} has an {what} shape {shape} with unknown "
            "dimensions; pass input_shape=(H, W, C) (no batch dimension) to "
            "mntk.cost.estimate.")


def _check_exit_rates(exit_rates, n_outputs) -> Optional[List[float]]:
    if exit_rates is None:
        return None
    rates = list(exit_rates)
    if len(rates) != n_outputs:
        raise ValueError(f"exit_rates has {len(rates)} entries but the model has "
                         f"{n_outputs} outputs; give one fraction per output.")
    for i, rate in enumerate(rates):
        if not is_finite_number(rate) or float(rate) < 0:
            raise ValueError(f"exit_rates[{i}] = {rate!r} is not a non-negative number.")
    total = float(sum(float(r) for r in rates))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"exit_rates {rates} sum to {total:g}, not 1; they are the "
                         "fractions of examples leaving at each output.")
    return [float(r) for r in rates]


def _fold_targets(calls, unwrapped, consumers, shapes) -> Dict[int, int]:
    """{index of a BatchNorm call: index of the kernel call it folds into}."""
    producer = {k: i for i, c in enumerate(calls) for k in c.outputs}
    kernel_kinds = (keras.layers.Conv1D.__mro__[1], keras.layers.Dense)
    folds = {}
    for i, call in enumerate(calls):
        bn = unwrapped[i].layer
        if not isinstance(bn, keras.layers.BatchNormalization) or len(call.inputs) != 1:
            continue
        j = producer.get(call.inputs[0])
        if j is None or consumers.get(call.inputs[0], 0) != 1:
            continue
        conv = unwrapped[j].layer
        if not isinstance(conv, kernel_kinds) or unwrapped[j].output_bits is not None:
            continue
        if activation_name(getattr(conv, "activation", None),
                           f"layer {calls[j].layer.name!r}") != "linear":
            continue
        axes = [a % len(shapes[calls[j].outputs[0]]) for a in np.atleast_1d(bn.axis)]
        channel_axis = (1 if getattr(conv, "data_format", "") == "channels_first"
                        else len(shapes[calls[j].outputs[0]]) - 1)
        if axes == [channel_axis]:
            folds[i] = j
    return folds


def _exit_index(calls, output_keys) -> List[int]:
    producer = {k: i for i, c in enumerate(calls) for k in c.outputs}
    first = [len(output_keys) - 1] * len(calls)
    seen = set()
    for out_index, key in enumerate(output_keys):
        stack = [producer[key]] if key in producer else []
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            first[i] = out_index
            stack.extend(producer[k] for k in calls[i].inputs if k in producer)
    return first


def _progress(items, total, label):
    if total < PROGRESS_MIN_LAYERS:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, total=total, desc=label, leave=False)


def estimate(model, *, task=None, freebie=None, accumulator_bits=None,
             exit_rates=None, input_shape=None, conventions="official") -> CostReport:
    """Count `model` by the MicroNet Challenge rules (NeurIPS 2019).

    params = storage bits / 32; ops = sum(mults * mult_bits/32 + adds *
    add_bits/32), averaged over examples with `exit_rates`; score = params /
    P_base + ops / M_base for `task` ("cifar100" | "imagenet").

    Args:
      model: a functional or Sequential tf_keras model (tfmot pruning/QAT
        wrappers and nested functional models are fine).
      task: "cifar100", "imagenet" or None (no score).
      freebie: count params and multiplies at 16 bits (adds stay 32); refused
        for a model quantized below 16 bits. None: the profile's (official:
        False).
      accumulator_bits: bits of every add. None: the profile's (32).
      exit_rates: for an n-output early-exit model, the fraction of examples
        leaving at each output (sums to 1); None counts every head.
      input_shape: shape of the input without batch (a list of them for
        several inputs) for models built with unknown dimensions.
      conventions: the counting profile: "official" (the MicroNet rules),
        "kaist", "osi", or a `mntk.cost.CountingProfile` (see
        `mntk.cost.profiles`); `freebie` / `accumulator_bits` given here
        override the profile's.
    """
    ensure_tf_keras(model)
    profile = get_profile(conventions)
    freebie = profile.freebie if freebie is None else bool(freebie)
    accumulator_bits = (profile.accumulator_bits if accumulator_bits is None
                        else accumulator_bits)
    if task is not None:
        from mntk.cost.baselines import baseline
        baseline(task)
    if not is_finite_number(accumulator_bits) or float(accumulator_bits) <= 0:
        raise ValueError(f"accumulator_bits={accumulator_bits!r} must be a positive number.")
    if not _is_functional(model):
        if isinstance(model, keras.Sequential) and input_shape is not None:
            model.build((None,) + tuple(input_shape))
        if not _is_functional(model):
            raise TypeError(
                f"mntk.cost.estimate needs a functional or built Sequential model; "
                f"{model.name!r} ({type(model).__name__}) has no layer graph. Build it "
                "with keras.Input(...), or pass input_shape= for a Sequential model.")
    calls, output_keys = flatten_graph(model)
    rates = _check_exit_rates(exit_rates, len(output_keys))
    if input_shape is not None:
        shapes = _propagate_shapes(model, calls, input_shape)
    else:
        shapes = _static_shapes(model, calls)
    consumers: Dict[tuple, int] = {}
    for call in calls:
        for k in call.inputs:
            consumers[k] = consumers.get(k, 0) + 1
    for k in output_keys:
        consumers[k] = consumers.get(k, 0) + 1
    unwrapped = [unwrap(c.layer) for c in _progress(calls, len(calls), "reading weights")]
    if freebie:
        for u in unwrapped:
            for what, bits in u.quantized_bits:
                if bits < 16:
                    raise ValueError(
                        f"freebie=True refused: the {what} is quantized to {bits:g} "
                        "bits (< 16); the MicroNet freebie is only for models not "
                        "quantized below 16 bits. Use freebie=False.")
    folds = _fold_targets(calls, unwrapped, consumers, shapes)
    folded_into = set(folds.values())
    exit_of = _exit_index(calls, output_keys)
    outputs = set(output_keys)
    tensor_bits: Dict[tuple, float] = {(0, id(t)): 32.0 for t in model.inputs}
    rows = []
    for i, call in enumerate(_progress(calls, len(calls), "counting")):
        u = unwrapped[i]
        in_shapes = [shapes[k] for k in call.inputs]
        out_shapes = [shapes[k] for k in call.outputs]
        in_bits = [tensor_bits.get(k, 32.0) for k in call.inputs]
        if u.output_bits is not None:
            out_bits = u.output_bits
        elif passes_bits(u.layer):
            out_bits = max(in_bits) if in_bits else 32.0
        else:
            out_bits = 32.0
        for k in call.outputs:
            tensor_bits[k] = out_bits
        if i in folds:
            continue
        rule = rule_for(u.layer) or unsupported_rule
        for shape in in_shapes + out_shapes:
            _check_known(shape, call, "input or output")
        ctx = CostContext(
            name=call.path + call.layer.name, layer_name=call.path + call.layer.name,
            unwrapped=u, input_shapes=[s[1:] for s in in_shapes],
            output_shapes=[s[1:] for s in out_shapes], input_bits=in_bits,
            accumulator_bits=accumulator_bits, freebie=freebie,
            is_model_output=any(k in outputs for k in call.outputs),
            folded_bn=i in folded_into, profile=profile)
        new_rows = list(rule(u.layer, ctx) or [])
        if u.extra_param_bits and new_rows:
            new_rows[0].param_bits += u.extra_param_bits
        elif u.extra_param_bits:
            new_rows.append(ctx.row("quantizer", bits=out_bits,
                                    param_bits=u.extra_param_bits))
        for row in new_rows:
            row.exit = exit_of[i]
        rows.extend(new_rows)
    exit_totals = [0.0] * len(output_keys)
    for row in rows:
        exit_totals[row.exit] += row.ops
    exit_ops = list(np.cumsum(exit_totals).tolist())
    return CostReport(layers=rows, exit_ops=exit_ops, exit_rates=rates, task=task,
                      freebie=bool(freebie), accumulator_bits=float(accumulator_bits),
                      model_name=model.name, conventions=profile)


def layer_rows(model, **estimate_kwargs) -> List:
    """The per-layer MicroNet counts of `model`: `estimate(model, ...).layers`.

    The counts a differentiable score is built from (e.g. a learned-precision
    objective). Each `LayerCost` row has `name`, `layer`, `kind`, `mults` /
    `adds` (raw counts), `mult_terms` / `add_terms` ((count, bits) pairs),
    `param_bits`, `exit`; a kernel row (conv / depthwise / dense, `channels`
    > 0) also has `channel_bits` (weight bits per output channel),
    `channel_values` (stored values per channel), `spatial` (output positions
    per channel), `input_bits` and `encoding`. For a dense or sparse kernel
    row (kind not ending in ":ternary" / ":binary"):

      mults of channel c = channel_values[c] * spatial,
        each at max(channel_bits[c], input_bits) bits (16 with the freebie);
      storage = sum_c channel_values[c] * channel_bits[c] (+ the mask when
        `encoding` is "sparse"), and the rest of `param_bits` (bias,
        quantizer scales) does not depend on the weight bits;
      adds are at the accumulator's bits, whatever the weight bits.
    Keyword arguments are `estimate`'s (task, freebie, conventions, ...).
    """
    return list(estimate(model, **estimate_kwargs).layers)
