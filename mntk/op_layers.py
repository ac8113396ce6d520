"""TF-op arithmetic of a functional graph as Keras layers (what ``mntk.prepare`` converts).

``x + 3.0`` or ``tf.math.multiply(x, y)`` in a functional model become
``TFOpLambda`` layers that tfmot and the MicroNet counter cannot take. Here a
node of that kind is recognized and given its Keras layer:

- the hard-sigmoid pattern ``ReLU(6)(x + 3) * (1/6)`` of MobileNetV3 becomes
  ``Activation(hard_sigmoid)``, and ``Multiply([x, hard_sigmoid(x)])``
  ``Activation(hard_swish)`` (Howard et al., "Searching for MobileNetV3",
  ICCV 2019: h-swish(x) = x ReLU6(x+3)/6), found by ``_find_patterns``;
- a tensor-and-scalar add/subtract/multiply/divide becomes
  ``Rescaling(scale, offset)``, two tensors ``Add``/``Subtract``/``Multiply``,
  and ``tf.nn.relu6`` / ``sigmoid`` / ``silu`` / ``tanh`` ``ReLU`` /
  ``Activation`` (``_op_layer``); anything else is a ``PrepareError`` naming
  the layer and the way out.

``hard_sigmoid`` and ``hard_swish`` are registered Keras activations
(``mntk>hard_sigmoid``, ``mntk>hard_swish``) so prepared models save and load.
"""
import numbers

import numpy as np
import tensorflow as tf

from mntk.compat import keras


class PrepareError(ValueError):
    """A model mntk cannot normalize; the message names the layer and the fix."""


@keras.utils.register_keras_serializable(package="mntk")
def hard_sigmoid(x):
    """MobileNetV3's hard sigmoid ReLU6(x + 3) / 6 (Keras 2's own
    ``hard_sigmoid`` is the different 0.2 x + 0.5 clip). Same op order as
    ``keras.applications.MobileNetV3``, so outputs are bit-identical."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@keras.utils.register_keras_serializable(package="mntk")
def hard_swish(x):
    """MobileNetV3's hard swish x * ReLU6(x + 3) / 6 (Howard et al., 2019)."""
    return x * hard_sigmoid(x)


_ADD = ("__operators__.add", "math.add")
_SUB = ("__operators__.sub", "math.subtract")
_MUL = ("__operators__.mul", "math.multiply")
_DIV = ("__operators__.truediv", "math.truediv", "math.divide")
_UNARY = {"nn.relu6": lambda name: keras.layers.ReLU(6.0, name=name),
          "nn.relu": lambda name: keras.layers.ReLU(name=name),
          "math.sigmoid": lambda name: keras.layers.Activation("sigmoid", name=name),
          "nn.sigmoid": lambda name: keras.layers.Activation("sigmoid", name=name),
          "nn.silu": lambda name: keras.layers.Activation("swish", name=name),
          "nn.swish": lambda name: keras.layers.Activation("swish", name=name),
          "math.tanh": lambda name: keras.layers.Activation("tanh", name=name),
          "nn.tanh": lambda name: keras.layers.Activation("tanh", name=name)}


def _is_keras_tensor(value):
    return hasattr(value, "_keras_history")


def _scalar(value):
    """A Python float for a scalar constant argument, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, tf.Tensor)) and not _is_keras_tensor(value):
        array = np.asarray(value)
        if array.size == 1 and array.ndim == 0:
            return float(array)
    return None


def _is_tf_op(layer):
    return type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda")


def _nodes(model):
    ordered = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        ordered.extend(model._nodes_by_depth[depth])
    return ordered


def _op_args(node):
    """(tensors, scalars) of a TF-op node's positional arguments."""
    args = list(node.call_args) + [v for k, v in node.call_kwargs.items() if k != "name"]
    tensors = [a for a in args if _is_keras_tensor(a)]
    scalars = [(i, _scalar(a)) for i, a in enumerate(args) if not _is_keras_tensor(a)]
    return args, tensors, scalars


def _is_relu6(node):
    layer = node.layer
    if not isinstance(layer, keras.layers.ReLU):
        return False
    cfg = layer.get_config()
    return (cfg.get("max_value") is not None and float(cfg["max_value"]) == 6.0
            and float(cfg["negative_slope"]) == 0.0 and float(cfg["threshold"]) == 0.0)


def _find_patterns(model, consumers):
    """{id(node): action} for the hard-sigmoid / hard-swish patterns.

    hard sigmoid: add(x, 3) -> ReLU(6) -> multiply(., 1/6), each feeding only
    the next; hard swish: Multiply([x, hard_sigmoid(x)]) with the same x.
    """
    actions = {}
    for node in _nodes(model):
        if not _is_tf_op(node.layer) or node.layer.symbol not in _ADD:
            continue
        args, tensors, scalars = _op_args(node)
        if len(tensors) != 1 or len(args) != 2 or [s for _, s in scalars] != [3.0]:
            continue
        chain = [node]
        for check in (_is_relu6, _is_scale_by_sixth):
            nxt = consumers.get(id(chain[-1].outputs), [])
            if len(nxt) != 1 or nxt[0] is None or not check(nxt[0]):
                break
            chain.append(nxt[0])
        if len(chain) != 3:
            continue
        x = tensors[0]
        end = chain[-1]
        kind, last = "hard_sigmoid", end
        after = consumers.get(id(end.outputs), [])
        if (len(after) == 1 and after[0] is not None and isinstance(after[0].layer, keras.layers.Multiply)
                and len(after[0].keras_inputs) == 2
                and any(t is x for t in after[0].keras_inputs)):
            kind, last = "hard_swish", after[0]
        actions[id(node)] = ("fuse", kind, x, last, chain)
        for inner in chain[1:] + ([last] if kind == "hard_swish" else []):
            actions[id(inner)] = ("absorbed",)
    return actions


def _is_scale_by_sixth(node):
    layer = node.layer
    if not _is_tf_op(layer):
        return False
    args, tensors, scalars = _op_args(node)
    if len(tensors) != 1 or len(args) != 2:
        return False
    value = scalars[0][1]
    if layer.symbol in _MUL:
        return value is not None and abs(value - 1.0 / 6.0) < 1e-12
    return layer.symbol in _DIV and scalars[0][0] == 1 and value == 6.0


def _consumers(model):
    out = {}
    for node in _nodes(model):
        for tensor in node.keras_inputs:
            out.setdefault(id(tensor), []).append(node)
    for tensor in model.outputs:  # a model output counts as a consumer
        out.setdefault(id(tensor), []).append(None)
    return out


def _op_layer(node, name):
    """The Keras layer (and its call inputs) for a TF-op node, or raise."""
    layer = node.layer
    symbol = layer.symbol
    args, tensors, scalars = _op_args(node)
    if symbol in _UNARY and len(tensors) == 1:
        return _UNARY[symbol](name), tensors[0]
    binary = symbol in _ADD + _SUB + _MUL + _DIV and len(args) == 2
    if binary and len(tensors) == 2 and symbol not in _DIV:
        cls = (keras.layers.Add if symbol in _ADD else keras.layers.Subtract
               if symbol in _SUB else keras.layers.Multiply)
        return cls(name=name), list(tensors)
    if binary and len(tensors) == 1 and scalars[0][1] is not None:
        position, c = scalars[0]
        if symbol in _ADD:
            scale, offset = 1.0, c
        elif symbol in _SUB:
            scale, offset = (1.0, -c) if position == 1 else (-1.0, c)
        elif symbol in _MUL:
            scale, offset = c, 0.0
        elif position == 1 and c != 0.0:
            scale, offset = 1.0 / c, 0.0
        else:
            scale = None
        if scale is not None:
            return keras.layers.Rescaling(scale, offset, name=name), tensors[0]
    raise PrepareError(
        f"prepare: layer {layer.name!r} is the TF op tf.{symbol} with arguments "
        f"{_describe(args)}, which mntk cannot turn into a Keras layer; replace it "
        "in the model by a Keras layer (keras.layers.Add/Multiply/Rescaling/"
        "Activation/Lambda-free custom layer) and rebuild.")


def _describe(args):
    return "(" + ", ".join(
        f"tensor{tuple(a.shape)}" if _is_keras_tensor(a) else repr(a) for a in args) + ")"


def _op_name(name):
    return name.replace("tf.__operators__.", "").replace("tf.", "").replace(".", "_")
