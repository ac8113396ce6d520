"""Softmax heads: find the softmax a classifier's logits go through, and
rewire a model to output the logits (``mntk.softmax_heads.to_logits``).

Every ``keras.applications`` classifier ends in softmax; losses that take
logits (``AdaptiveLabelSmoothing``, ``Distillation``, ``compile_exits``'
default) would train on probabilities as if they were logits. These helpers
let them refuse with the fix, or rewire.
"""
from mntk.compat import keras
from mntk.prepare import _check, _is_nested, _producer, prepare, rebuild

__all__ = ["softmax_head", "softmax_after", "to_logits"]

_PASS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def softmax_head(model, index=-1):
    """Where output ``index`` of ``model`` applies softmax, or None.

    Returns ``(softmax_layer, classifier_layer)``: the layer that applies it
    (an ``Activation("softmax")``/``Softmax`` layer, or a Dense/Conv with
    ``activation="softmax"``) and the classifier whose logits it normalizes
    (the last Dense or Conv2D before it, through Flatten/Reshape/Dropout).
    """
    node = _producer(model.outputs[index])
    layer = node.layer
    if _is_nested(layer):
        return None
    activation = getattr(layer, "activation", None)
    is_softmax = (isinstance(layer, keras.layers.Softmax)
                  or getattr(activation, "__name__", None) == "softmax")
    if not is_softmax:
        return None
    classifier = layer
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        classifier = None
        while node.keras_inputs and len(node.keras_inputs) == 1:
            node = _producer(node.keras_inputs[0])
            if isinstance(node.layer, (keras.layers.Dense, keras.layers.Conv2D)):
                classifier = node.layer
                break
            if not isinstance(node.layer, _PASS):
                break
    return layer, classifier


def softmax_after(layer):
    """The layer applying softmax to ``layer``'s output, or None.

    ``layer`` itself (``activation="softmax"``), or an ``Activation("softmax")``
    / ``Softmax`` layer reached through Flatten/Reshape/Dropout layers that each
    feed only the next.
    """
    if getattr(getattr(layer, "activation", None), "__name__", None) == "softmax":
        return layer
    current = layer
    while True:
        nodes = getattr(current, "_outbound_nodes", [])
        if len(nodes) != 1:
            return None
        nxt = nodes[0].outbound_layer
        if isinstance(nxt, keras.layers.Softmax) or (
                isinstance(nxt, keras.layers.Activation)
                and getattr(nxt.activation, "__name__", None) == "softmax"):
            return nxt
        if not isinstance(nxt, _PASS):
            return None
        current = nxt


def to_logits(model, name=None, prepare_graph=False):
    """A copy of ``model`` whose outputs are the logits before a final softmax.

    A trailing ``Activation("softmax")``/``Softmax`` layer is dropped; a Dense
    or Conv2D with ``activation="softmax"`` gets ``activation="linear"``
    (same weights). Other outputs are copied unchanged. Outputs that apply no
    softmax are left as they are; ``to_logits`` of such a model is a plain copy.
    """
    _check(model, "to_logits")
    heads = [softmax_head(model, i) for i in range(len(model.outputs))]
    drop = {id(h[0]) for h in heads if h and isinstance(h[0], (keras.layers.Activation,
                                                               keras.layers.Softmax))}
    relinear = {id(h[0]) for h in heads if h and id(h[0]) not in drop}
    if not drop and not relinear:
        return prepare(model, convert_ops=prepare_graph, flatten=prepare_graph, name=name)

    def wrap(new, original):
        if id(original) in relinear:
            new.activation = keras.activations.get("linear")
        return new

    # Cut the dropped softmax layers: re-point the outputs at their inputs.
    outputs = []
    for tensor in model.outputs:
        node = _producer(tensor)
        outputs.append(node.keras_inputs[0] if id(node.layer) in drop else tensor)
    trimmed = keras.Model(model.inputs, outputs, name=model.name)
    return rebuild(trimmed, wrap, convert_ops=prepare_graph, flatten=prepare_graph,
                   name=name)[0]
