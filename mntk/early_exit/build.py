"""``add_exits``: attach exit heads to a functional model.

Exits go at named layers or at fractions of the backbone's cumulative ops (SDN
places its heads at 15%..90% of the network's cost; Kaya et al., ICML 2019).
The result holds its own copy of the backbone (``mntk.prepare``: same
weights, TF-op arithmetic as Keras layers, nested models flattened), so
training or freezing it leaves the given model untouched.
"""
import difflib
import numbers
import warnings

import tensorflow as tf

from mntk.compat import keras
from mntk.early_exit import graph
from mntk.early_exit.heads import get_head

__all__ = ["add_exits", "exit_fractions"]


def _nodes_of_layer(model, layer):
    return [node for node in graph.topological_nodes(model) if node.layer is layer]


def _node_by_name(model, name):
    names = [layer.name for layer in model.layers]
    if name not in names:
        near = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
        hint = f" Nearest names: {near}." if near else ""
        raise ValueError(
            f"add_exits: {name!r} is not a layer of model {model.name!r}.{hint} "
            "Pass layer names from model.summary() or fractions of the "
            "cumulative ops such as 0.3.")
    layer = model.get_layer(name)
    nodes = _nodes_of_layer(model, layer)
    if len(nodes) != 1:
        raise ValueError(
            f"add_exits: layer {name!r} is called {len(nodes)} times in "
            f"{model.name!r}, so its output is ambiguous. Attach the exit at a "
            "layer that is used once.")
    return nodes[0]


def exit_fractions(model):
    """Cut points of ``model`` with their fraction of the backbone's ops.

    Returns ``[(layer_name, fraction)]`` in depth order, where fraction =
    ops of every layer up to and including that layer / ops of the whole model
    (as counted by ``mntk.cost.estimate``).
    """
    from mntk import cost
    report = cost.estimate(model)
    ops_by_layer = {}
    for row in report.layers:
        ops_by_layer[row.layer] = ops_by_layer.get(row.layer, 0.0) + float(row.ops)
    total = sum(ops_by_layer.values())
    if total <= 0:
        raise ValueError(
            f"add_exits: mntk.cost counted no ops in {model.name!r}; exits cannot "
            "be placed by fraction. Pass layer names instead.")
    fractions = []
    for node, computed in graph.cut_points(model):
        done = sum(ops_by_layer.get(n.layer.name, 0.0) for n in computed)
        fractions.append((node, done / total))
    return fractions


_MID_BLOCK = (keras.layers.BatchNormalization, keras.layers.Activation,
              keras.layers.ReLU)


def _block_outputs(model, candidates, head):
    """Cut points worth an exit: past the first op, a feature map the head
    accepts, and the end of a conv-BN-activation group (in a chain every
    layer is a cut point; an exit between a conv and its BN is not useful)."""
    from mntk import prepare as _prepare
    skip = set(_prepare.preprocessing_layers(model))
    consumers = {}
    for node in graph.topological_nodes(model):
        for tensor in node.keras_inputs:
            consumers.setdefault(id(tensor), []).append(node.layer)
    kept, fallback = [], []
    for node, fraction in candidates:
        out = tf.nest.flatten(node.outputs)[0]
        if node.layer.name in skip or fraction <= 0.0:
            continue
        if head in ("osi", "sdn") and len(out.shape) != 4:
            continue
        fallback.append((node, fraction))
        users = consumers.get(id(out), [])
        if not any(isinstance(u, _MID_BLOCK) for u in users):
            kept.append((node, fraction))
    return kept or fallback


def _nodes_by_fraction(fractions, candidates, model, taken):
    """Distinct cut points for ``fractions`` (ascending), each the candidate
    nearest to its fraction among those deeper than the previous choice."""
    for fraction in fractions:
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"add_exits: exit position {fraction!r} is not a fraction in (0, 1) "
                "of the cumulative ops. Use e.g. at=[0.3, 0.6], or layer names.")
    if not candidates:
        raise ValueError(
            f"add_exits: model {model.name!r} has no single-tensor cut point to "
            "place an exit at; pass layer names instead.")
    chosen, start = {}, 0
    ordered = sorted(set(fractions))
    for k, fraction in enumerate(ordered):
        # leave room for the fractions still to place
        pool = [(i, c) for i, c in enumerate(candidates)
                if i >= start and c[0] not in taken
                and i < len(candidates) - (len(ordered) - 1 - k)]
        if not pool:
            raise ValueError(
                f"add_exits: model {model.name!r} has {len(candidates)} places an "
                f"exit can go ({[c[0].layer.name for c in candidates]}), too few for "
                f"distinct exits at {sorted(fractions)}; ask for fewer exits or "
                "pass layer names.")
        i, (node, _) = min(pool, key=lambda ic: abs(ic[1][1] - fraction))
        chosen[fraction] = node
        start = i + 1
    return chosen


def add_exits(model, at, head="osi", num_classes=None, name=None):
    """Returns a functional model with outputs ``[exit_0, ..., final]`` (logits).

    Args:
      model: a tf_keras functional model with one logits output.
      at: exit points, each a layer name (the head reads that layer's output)
        or a float in (0, 1): the cut point whose cumulative ops are nearest to
        that fraction of the model's ops (``mntk.cost``). Sorted by depth.
      head: ``"osi"``, ``"sdn"``, ``"linear"`` or a callable
        ``head(tensor, num_classes, name) -> logits`` whose last layer is named
        ``name``.
      num_classes: classes of each head (default: the final output's width).
      name: the new model's name (default ``<model.name>_exits``).

    The returned model computes on a copy of ``model``'s layers with the same
    weights; ``model`` itself is not modified. A final softmax (every
    ``keras.applications`` classifier has one) is dropped, with a warning, so
    that every output is logits as ``compile_exits`` and ``calibrate`` expect.
    Exit ``i``'s last layer is named ``exit_i``.
    """
    from mntk import softmax_heads
    graph.keras_model_check(model)
    if len(model.outputs) != 1:
        raise ValueError(
            f"add_exits: model {model.name!r} has {len(model.outputs)} outputs; "
            "it needs exactly one (the final logits).")
    softmax = softmax_heads.softmax_head(model)
    if softmax:
        warnings.warn(
            f"add_exits: the output of {model.name!r} is the softmax of layer "
            f"{softmax[0].name!r}; the multi-exit model outputs its logits instead.",
            stacklevel=2)
    model = softmax_heads.to_logits(model, prepare_graph=True)
    if isinstance(at, (str, numbers.Real)):
        at = [at]
    if not at:
        raise ValueError("add_exits: `at` is empty; give at least one exit point.")
    final = model.outputs[0]
    final_node = graph.producer_node(final)
    backbone = graph.ancestor_nodes([final])
    order = {node: i for i, node in enumerate(graph.topological_nodes(model))}
    points = {}
    fractions = [float(spec) for spec in at
                 if isinstance(spec, numbers.Real) and not isinstance(spec, bool)]
    by_fraction = {}
    for spec in at:
        if isinstance(spec, str):
            node = _node_by_name(model, spec)
        elif isinstance(spec, numbers.Real) and not isinstance(spec, bool):
            if not by_fraction:
                named = {_node_by_name(model, s) for s in at if isinstance(s, str)}
                candidates = _block_outputs(model, exit_fractions(model), head)
                by_fraction = _nodes_by_fraction(fractions, candidates, model, named)
            node = by_fraction[float(spec)]
        else:
            raise TypeError(
                f"add_exits: exit point {spec!r} must be a layer name or a "
                "fraction of the cumulative ops.")
        label = node.layer.name
        if node is final_node or node not in backbone:
            raise ValueError(
                f"add_exits: exit at {label!r} (from {spec!r}) is at or after the "
                f"final layer {final_node.layer.name!r} of {model.name!r}; an "
                "exit must come before the final output. Pick an earlier layer.")
        if not node.keras_inputs:
            raise ValueError(
                f"add_exits: {label!r} is an input layer; attach the exit after "
                "at least one layer.")
        if node in points:
            raise ValueError(
                f"add_exits: exit points {points[node]!r} and {spec!r} both "
                f"resolve to layer {label!r}; give distinct positions.")
        points[node] = spec
    head_fn = get_head(head)
    if num_classes is None:
        num_classes = int(final.shape[-1])
    exits = []
    for i, node in enumerate(sorted(points, key=order.get)):
        features = tf.nest.flatten(node.outputs)
        if len(features) != 1:
            raise ValueError(
                f"add_exits: layer {node.layer.name!r} has {len(features)} "
                "outputs; attach the exit at a layer with one output.")
        exit_name = f"exit_{i}"
        logits = head_fn(features[0], num_classes, exit_name)
        made_by = getattr(getattr(logits, "_keras_history", None), "layer", None)
        if made_by is None or made_by.name != exit_name:
            raise ValueError(
                f"add_exits: the head callable must return a Keras tensor whose "
                f"last layer is named {exit_name!r} (it got name={exit_name!r}); "
                f"got {getattr(made_by, 'name', logits)!r}.")
        exits.append(logits)
    return keras.Model(model.inputs, exits + [final],
                       name=name or f"{model.name}_exits")
