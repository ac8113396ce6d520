"""Graph walking for multi-exit functional models.

A multi-exit model has outputs ``[exit_0, ..., exit_{n-1}, final]``. It is cut
into ``n + 1`` segments: segment ``i`` computes every layer needed for
``exit_i`` that no earlier segment computed, and hands on the *boundary*: the
tensors it (or an earlier segment) produced that later layers still consume.
For an exit at a block output that is a single feature map; across a skip
connection it is every tensor crossing the cut, so the split is exact for any
functional graph. Segment sub-models share the multi-exit model's layer objects
(and so its weights).
"""
import collections

import tensorflow as tf

from mntk.compat import keras

__all__ = ["producer_node", "ancestor_nodes", "topological_nodes",
           "exit_structure", "build_segments", "route", "cut_points"]


def producer_node(tensor):
    """The Keras ``Node`` that produced a symbolic tensor."""
    layer, node_index, _ = tensor._keras_history
    return layer._inbound_nodes[node_index]


def _tensor_index(tensor):
    return tensor._keras_history.tensor_index


def ancestor_nodes(tensors):
    """All nodes (input-layer nodes included) that ``tensors`` depend on."""
    seen = set()
    stack = [producer_node(t) for t in tensors]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(producer_node(t) for t in node.keras_inputs)
    return seen


def topological_nodes(model):
    """The model's nodes from inputs to outputs (stable order)."""
    ordered = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        ordered.extend(model._nodes_by_depth[depth])
    return ordered


def _boundary(computed, needed_later, order):
    """Tensors produced in ``computed`` that some node in ``needed_later`` reads."""
    found = {}
    for node in needed_later:
        for tensor in node.keras_inputs:
            if producer_node(tensor) in computed:
                found[id(tensor)] = tensor
    return sorted(found.values(),
                  key=lambda t: (order[producer_node(t)], _tensor_index(t)))


ExitStructure = collections.namedtuple(
    "ExitStructure", ["num_exits", "boundaries", "node_sets", "new_features",
                      "routes"])


def exit_structure(multi):
    """Checks ``multi`` is a multi-exit model and finds its segment boundaries.

    Returns an ``ExitStructure``: ``boundaries[i]`` is the list of input tensors
    of segment ``i`` (``boundaries[0]`` are the model inputs), ``node_sets[i]``
    the nodes segment ``i`` computes, ``new_features[i]`` the boundary tensors
    segment ``i`` itself produces (its outputs after the exit logits), and
    ``routes[i]`` says where each tensor of ``boundaries[i + 1]`` comes from:
    ``("in", j)`` = input ``j`` of segment ``i`` passed on unchanged (a skip
    connection over the whole segment), ``("out", k)`` = its output ``1 + k``.
    """
    keras_model_check(multi)
    outputs = list(multi.outputs)
    if len(outputs) < 2:
        raise ValueError(
            f"Model {multi.name!r} has {len(outputs)} output; a multi-exit model "
            "has outputs [exit_0, ..., exit_{n-1}, final]. Build it with "
            "mntk.early_exit.add_exits(model, at=[...]).")
    order = {node: i for i, node in enumerate(topological_nodes(multi))}
    ancestors = [ancestor_nodes([t]) for t in outputs]
    backbone = ancestors[-1]
    for i in range(len(outputs) - 2):
        if not (ancestors[i] & backbone) <= ancestors[i + 1]:
            raise ValueError(
                f"Outputs of {multi.name!r} are not in depth order: "
                f"{multi.output_names[i]!r} needs backbone layers that "
                f"{multi.output_names[i + 1]!r} does not. Order the exits from "
                "shallow to deep (add_exits does this).")
    computed, node_sets = set(), []
    boundaries = [list(multi.inputs)]
    for i, needed in enumerate(ancestors):
        new = needed - computed
        computed |= new
        node_sets.append(new)
        if i == len(outputs) - 1:
            break
        later = set().union(*ancestors[i + 1:]) - computed
        boundaries.append(_boundary(computed, later, order))
    new_features, routes = [], []
    for i in range(len(outputs) - 1):
        ins = {id(t): j for j, t in enumerate(boundaries[i])}
        new = [t for t in boundaries[i + 1] if id(t) not in ins]
        outs = {id(t): k for k, t in enumerate(new)}
        new_features.append(new)
        routes.append([("in", ins[id(t)]) if id(t) in ins else ("out", outs[id(t)])
                       for t in boundaries[i + 1]])
    return ExitStructure(len(outputs) - 1, boundaries, node_sets, new_features,
                         routes)


def build_segments(multi):
    """Segment sub-models sharing ``multi``'s layers.

    Segment ``i < n`` maps its boundary inputs to ``[exit_i logits,
    *new_features[i]]`` (tensors passed over the segment unchanged are not
    outputs: see ``routes``); the last segment maps its inputs to the final
    logits.
    """
    structure = exit_structure(multi)
    n = structure.num_exits
    segments = []
    for i in range(n + 1):
        ins = structure.boundaries[i]
        if i < n:
            outs = [multi.outputs[i]] + structure.new_features[i]
        else:
            outs = [multi.outputs[-1]]
        segments.append(keras.Model(ins, outs, name=f"{multi.name}_segment_{i}"))
    return segments, structure


def route(routes, inputs, new_outputs):
    """The next segment's inputs from this one's inputs and new outputs."""
    return [inputs[j] if source == "in" else new_outputs[j]
            for source, j in routes]


def cut_points(model):
    """Backbone nodes whose single output is the only tensor crossing a cut.

    These are the places an exit head can go so that the rest of the network
    only needs that one tensor (block outputs, not the inside of a residual
    block). Returns ``[(node, ancestor_nodes)]`` in topological order; the
    output node and input layers are excluded.
    """
    keras_model_check(model)
    final = producer_node(model.outputs[-1])
    backbone = ancestor_nodes([model.outputs[-1]])
    order = {node: i for i, node in enumerate(topological_nodes(model))}
    points = []
    for node in sorted(backbone, key=order.get):
        flat_outputs = tf.nest.flatten(node.outputs)
        if node is final or not node.keras_inputs or len(flat_outputs) != 1:
            continue
        computed = ancestor_nodes(flat_outputs)
        crossing = _boundary(computed, backbone - computed, order)
        if len(crossing) == 1 and crossing[0] is flat_outputs[0]:
            points.append((node, computed))
    return points


def keras_model_check(model):
    """Raise unless ``model`` is a tf_keras functional (graph) model."""
    from mntk.compat import ensure_tf_keras
    ensure_tf_keras(model)
    if not isinstance(model, keras.Model) or not getattr(
            model, "_is_graph_network", False):
        raise TypeError(
            f"{type(model).__name__} {getattr(model, 'name', '')!r} is not a "
            "functional Keras model; early exit needs the layer graph. Rebuild it "
            "with the functional API (keras.Input -> layers -> keras.Model), or "
            "call the subclassed model inside a functional wrapper whose "
            "layers are visible.")
    return model
