"""Model preparation: the graph normalization in front of every capability.

Users bring ``keras.applications`` backbones and their own functional models.
Their graphs hold things tfmot and the MicroNet counter cannot take as they
are; ``prepare(model)`` returns a *new* model that computes the same function
(outputs identical) in plain Keras layers:

- ``TFOpLambda`` arithmetic (what ``x + 3.0`` or ``tf.math.multiply`` become in
  a functional model) turns into Keras layers: the hard-sigmoid pattern
  ``ReLU(6)(x + 3) * (1/6)`` of MobileNetV3 into ``Activation(hard_sigmoid)``,
  ``Multiply([x, hard_sigmoid(x)])`` into ``Activation(hard_swish)`` (Howard et
  al., "Searching for MobileNetV3", ICCV 2019: h-swish(x) = x ReLU6(x+3)/6),
  a tensor-and-scalar add/multiply into ``Rescaling(scale, offset)``, two
  tensors into ``Add``/``Multiply``/``Subtract``, and ``tf.nn.relu6`` /
  ``sigmoid`` / ``silu`` / ``tanh`` into ``ReLU`` / ``Activation``;
- nested functional models (a backbone used as a layer) are flattened into
  the outer graph (a clashing inner name gets ``<nested model>_`` in front);
- an adapted ``Normalization`` keeps its statistics in its config (mean and
  variance as arguments), so later clones (tfmot's) cannot reset them.

Every layer of the result is a fresh object with the original's weights: the
given model is never touched. ``preprocessing_layers(model)`` names the
leading input-preprocessing layers (``Rescaling``, ``Normalization``,
resizing), which pruning and quantization leave float
(``mntk.softmax_heads.to_logits(model)`` drops a final softmax). A graph mntk cannot rebuild raises ``PrepareError``:
one line naming the layer and the way out.

This module rebuilds the graph node by node (``rebuild``, which pruning and
quantization also use to wrap each copied layer); recognizing TF-op nodes and
choosing their Keras layers is ``mntk.op_layers``.
"""
import numpy as np
import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras
from mntk.op_layers import (
    PrepareError, _consumers, _find_patterns, _is_keras_tensor, _is_tf_op, _nodes, _op_layer,
    _op_name, hard_sigmoid, hard_swish)

__all__ = ["prepare", "preprocessing_layers", "hard_sigmoid", "hard_swish", "PrepareError",
           "rebuild"]

_PREPROCESSING = tuple(getattr(keras.layers, n) for n in (
    "Rescaling", "Normalization", "Resizing", "CenterCrop") if hasattr(keras.layers, n))


def _is_nested(layer):
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def _producer(tensor):
    layer, node_index, _ = tensor._keras_history
    return layer._inbound_nodes[node_index]


class _Rebuilder:
    """Rebuilds a functional graph node by node with fresh layers.

    ``wrap(new_layer, original) -> layer`` may wrap each copied layer (pruning,
    quantize annotation); weights are copied into the inner layer after it is
    built.
    """

    def __init__(self, wrap=None, convert_ops=True, flatten=True):
        self.wrap = wrap
        self.convert_ops = convert_ops
        self.flatten = flatten
        self.copies = {}  # id(original layer) -> (new layer, original)
        self.names = set()  # names taken in the new model
        self.reserved = set()  # the outer model's own layer names
        self._scope = None
        self.report = {"converted": [], "flattened": []}

    def _unique(self, name, prefix="", own=False):
        # Outer layers keep their names (own=True); a nested model's layer is
        # renamed <nested>_<name> only when it clashes.
        taken = self.names if own else self.names | self.reserved
        candidate = name if name not in taken else f"{prefix}{name}"
        i = 1
        while candidate in self.names:
            candidate = f"{prefix}{name}_{i}"
            i += 1
        self.names.add(candidate)
        return candidate

    def _copy(self, layer, prefix):
        key = id(layer)
        if key in self.copies:
            return self.copies[key][0]
        config = layer.get_config()
        config["name"] = self._unique(layer.name, prefix, own=not prefix)
        if isinstance(layer, keras.layers.Normalization):
            config = _normalization_config(layer, config)
        if self._scope is None:
            # tfmot is heavy and only needed for wrapped layers: imported here
            from mntk.quantization.schemes import custom_objects
            self._scope = custom_objects()
        import tensorflow_model_optimization as tfmot
        with tfmot.quantization.keras.quantize_scope(self._scope), \
                tfmot.sparsity.keras.prune_scope():
            new = layer.__class__.from_config(config)
        new.trainable = layer.trainable
        if self.wrap is not None:
            new = self.wrap(new, layer)
        self.copies[key] = (new, layer)
        return new

    def run(self, model, inputs, prefix=""):
        tensors = {id(t): n for t, n in zip(model.inputs, inputs)}
        consumers = _consumers(model)
        actions = _find_patterns(model, consumers) if self.convert_ops else {}

        def mapped(value):
            return tf.nest.map_structure(
                lambda v: tensors[id(v)] if _is_keras_tensor(v) else v, value)

        for node in _nodes(model):
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            action = actions.get(id(node))
            if action and action[0] == "absorbed":
                continue
            if action:
                _, kind, x, last, chain = action
                base = last.layer.name if kind == "hard_swish" else chain[1].layer.name
                fn = hard_swish if kind == "hard_swish" else hard_sigmoid
                new = keras.layers.Activation(
                    fn, name=self._unique(f"{_op_name(base)}_{kind}", prefix))
                out = new(tensors[id(x)])
                tensors[id(last.outputs)] = out
                self.report["converted"].append(
                    (kind, [n.layer.name for n in chain] + (
                        [last.layer.name] if kind == "hard_swish" else [])))
                continue
            if _is_nested(layer) and self.flatten:
                inner_inputs = tf.nest.flatten(mapped(node.call_args[0]))
                outs = self.run(layer, inner_inputs, prefix=f"{layer.name}_")
                for t, o in zip(tf.nest.flatten(node.outputs), outs):
                    tensors[id(t)] = o
                self.report["flattened"].append(layer.name)
                continue
            if _is_tf_op(layer) and self.convert_ops:
                new, call_inputs = _op_layer(node, self._unique(_op_name(layer.name), prefix))
                out = new(mapped(call_inputs))
                tensors[id(node.outputs)] = out
                self.report["converted"].append((type(new).__name__, [layer.name]))
                continue
            new = self._copy(layer, prefix)
            kwargs = {k: v for k, v in mapped(node.call_kwargs).items()}
            out = new(*mapped(node.call_args), **kwargs)
            for t, o in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                tensors[id(t)] = o
            self._set_weights(new, layer)
        return [tensors[id(t)] for t in model.outputs]

    def _set_weights(self, new, original):
        inner = getattr(new, "layer", new) if new is not original else new
        if getattr(inner, "_mntk_weights_set", False):
            return
        weights = original.get_weights()
        if isinstance(original, keras.layers.Normalization):
            weights = []  # the statistics moved into the config
        if weights:
            target = inner if len(inner.get_weights()) == len(weights) else new
            try:
                target.set_weights(weights)
            except ValueError as err:
                raise PrepareError(
                    f"prepare: cannot copy the weights of layer {original.name!r} "
                    f"({type(original).__name__}) into its rebuilt copy: {err}. "
                    "Give the layer a get_config that rebuilds the same weights.") from None
        inner._mntk_weights_set = True


def _normalization_config(layer, config):
    """An adapted Normalization with its statistics as constructor arguments,
    so clones (tfmot clones with get_config + set_weights, which does not
    re-finalize adapted statistics) keep them."""
    if config.get("mean") is not None or not layer.built:
        return config
    config = dict(config)
    config["mean"] = np.asarray(layer.mean).reshape(-1).tolist()
    config["variance"] = np.asarray(layer.variance).reshape(-1).tolist()
    axis = config.get("axis")
    if axis is None or (isinstance(axis, (list, tuple)) and not axis):
        config["mean"] = float(config["mean"][0])
        config["variance"] = float(config["variance"][0])
    return config


def _check(model, what):
    ensure_tf_keras(model, "model")
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise PrepareError(
            f"{what}: model {getattr(model, 'name', model)!r} is not a functional or "
            "Sequential Keras model built on an input, so mntk cannot read its "
            "graph; rebuild it with keras.Input -> layers -> keras.Model.")


def rebuild(model, wrap=None, convert_ops=True, flatten=True, name=None, what="prepare"):
    """The prepared copy of ``model``; ``wrap`` as in ``_Rebuilder``.

    Returns ``(new_model, report)``; report lists converted ops and flattened
    nested models.
    """
    _check(model, what)
    builder = _Rebuilder(wrap, convert_ops, flatten)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            builder.names.add(layer.name)
        elif not (_is_nested(layer) and flatten):
            builder.reserved.add(layer.name)
    inputs = []
    for tensor in model.inputs:
        layer = tensor._keras_history.layer
        inputs.append(keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                  name=layer.name))
    try:
        outputs = builder.run(model, inputs)
    except PrepareError as err:
        if what != "prepare":
            raise PrepareError(str(err).replace("prepare:", f"{what}:", 1)) from None
        raise
    single = len(model.outputs) == 1 and not isinstance(model.output, (list, tuple))
    new = keras.Model(inputs, outputs[0] if single else outputs,
                      name=name or model.name)
    return new, builder.report


def prepare(model, convert_ops=True, flatten=True, name=None):
    """A copy of ``model`` with TF-op arithmetic as Keras layers and nested
    models flattened (see the module docstring). Outputs are identical; the
    given model is not modified."""
    return rebuild(model, None, convert_ops, flatten, name)[0]


def preprocessing_layers(model):
    """Names of the input-preprocessing layers that lead the graph.

    A ``Rescaling``/``Normalization``/``Resizing``/``CenterCrop`` layer whose
    inputs are model inputs or other such layers. Pruning and quantization leave
    them float: they hold no weights to prune, and quantizing them would
    quantize the raw input range into the first conv's input.
    """
    leading, names = set(), []
    for node in _nodes(model):
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            leading.add(id(node))
            continue
        if isinstance(layer, _PREPROCESSING) and all(
                id(_producer(t)) in leading for t in node.keras_inputs):
            leading.add(id(node))
            if layer.name not in names:
                names.append(layer.name)
    return names
