"""Training multi-exit models: per-exit losses and weights, frozen backbones.

Total loss = sum_i w_i * L_i(y, exit_i) + w_final * L(y, final). The weights
live in ``tf.Variable``s inside ``ExitWeightedLoss`` wrappers, so a callback
(``ExitWeightRamp``: SDN's schedule) can change them during ``fit`` without a
recompile or a retrace, also under ``tf.distribute``.

SDN (Kaya et al., ICML 2019) trains the internal classifiers with weights that
grow linearly from 0.01 to tau_i over the epochs, tau_i being the head's
position as a fraction of the network's cost (0.15 ... 0.9); the final output
keeps weight 1. OSI-AI froze the backbone and trained the head alone.
"""
import numpy as np
import tensorflow as tf

from mntk.compat import keras
from mntk.early_exit import graph

__all__ = ["ExitWeightedLoss", "ExitWeightRamp", "compile_exits",
           "freeze_backbone"]


@keras.utils.register_keras_serializable(package="mntk")
class ExitWeightedLoss(keras.losses.Loss):
    """``weight * loss(y_true, y_pred)`` with ``weight`` a non-trainable Variable.

    Keras reports each output's loss metric after this scaling, so
    ``exit_0_loss`` in the logs is the weighted term of the total loss.
    """

    def __init__(self, loss, weight=1.0, name=None, **kwargs):
        loss = keras.losses.get(loss)
        if not isinstance(loss, keras.losses.Loss):
            loss = keras.losses.LossFunctionWrapper(
                loss, name=getattr(loss, "__name__", "loss"))
        kwargs.setdefault("reduction", loss.reduction)
        super().__init__(name=name or f"weighted_{loss.name}", **kwargs)
        self.loss = loss
        self.weight = tf.Variable(
            float(weight), trainable=False, dtype=tf.float32, name="exit_weight",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras lets compiled losses use SUM_OVER_BATCH_SIZE under a strategy
        # by flagging the outer object; the inner loss needs the same flag.
        self.loss._allow_sum_over_batch_size = getattr(
            self, "_allow_sum_over_batch_size", False)
        value = self.loss(y_true, y_pred, sample_weight=sample_weight)
        return value * tf.cast(self.weight, value.dtype)

    def call(self, y_true, y_pred):  # only reached through keras internals
        return self.loss.call(y_true, y_pred) * self.weight

    def get_config(self):
        config = super().get_config()
        config.update(loss=keras.losses.serialize(self.loss),
                      weight=float(self.weight.numpy()))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        return cls(**config)


@keras.utils.register_keras_serializable(package="mntk")
class ExitWeightRamp(keras.callbacks.Callback):
    """SDN's loss-weight schedule: ``w_i(e) = start + (tau_i - start) * min(1, e / (epochs - 1))``.

    Args:
      final_weights: tau_i per output (the final output's included, usually 1).
      epochs: epochs over which the weights ramp (epoch 0 uses ``start``).
      start: initial weight of the ramped outputs (0.01 in SDN).
      ramp_final: whether the final output ramps too (SDN: no, it stays at tau).
    """

    def __init__(self, final_weights, epochs, start=0.01, ramp_final=False):
        super().__init__()
        if epochs < 1:
            raise ValueError(f"ExitWeightRamp: epochs={epochs!r} must be >= 1.")
        self.final_weights = [float(w) for w in final_weights]
        self.epochs = int(epochs)
        self.start = float(start)
        self.ramp_final = bool(ramp_final)
        self.weights = None  # the tf.Variables, set by compile_exits

    @classmethod
    def sdn(cls, multi, epochs, start=0.01):
        """tau_i = ops needed for exit i / ops of the final output (mntk.cost)."""
        from mntk import cost
        exit_ops = cost.estimate(multi).exit_ops
        taus = [float(o) / float(exit_ops[-1]) for o in exit_ops[:-1]] + [1.0]
        return cls(taus, epochs, start=start)

    def weights_at(self, epoch):
        """The weights used during ``epoch`` (numpy reference of the schedule)."""
        progress = 1.0 if self.epochs == 1 else min(1.0, epoch / (self.epochs - 1))
        ramped = [self.start + (tau - self.start) * progress
                  for tau in self.final_weights]
        if not self.ramp_final:
            ramped[-1] = self.final_weights[-1]
        return ramped

    def on_epoch_begin(self, epoch, logs=None):
        if self.weights is None:
            raise RuntimeError(
                "ExitWeightRamp is not wired to a model; pass it to "
                "mntk.early_exit.compile_exits(..., exit_weights=ramp) first.")
        for variable, value in zip(self.weights, self.weights_at(epoch)):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.weights is not None:
            for i, variable in enumerate(self.weights):
                logs[f"exit_weight_{i}"] = float(variable.numpy())

    def get_config(self):
        return {"final_weights": self.final_weights, "epochs": self.epochs,
                "start": self.start, "ramp_final": self.ramp_final}

    @classmethod
    def from_config(cls, config):
        """Unwired, as built; ``compile_exits`` wires it to a model's weights."""
        return cls(**config)


def freeze_backbone(multi, bn_trainable=False):
    """Sets every backbone layer (those the final output needs) non-trainable.

    With ``bn_trainable=True`` the backbone's BatchNormalization layers stay
    trainable: they normalize with batch statistics and keep updating their
    moving mean/variance during ``fit`` (Keras 2 runs a frozen BN in inference
    mode), and their scale/offset train too. Returns the frozen layers.
    """
    graph.exit_structure(multi)  # validates the multi-exit layout
    backbone = graph.ancestor_nodes([multi.outputs[-1]])
    exit_nodes = graph.ancestor_nodes(multi.outputs[:-1]) - backbone
    head_layers = {id(node.layer) for node in exit_nodes}
    frozen = []
    for node in backbone:
        layer = node.layer
        if id(layer) in head_layers or isinstance(layer, keras.layers.InputLayer):
            continue
        if bn_trainable and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            continue
        layer.trainable = False
        frozen.append(layer)
    for node in exit_nodes:
        node.layer.trainable = True
    return frozen


_freeze = freeze_backbone  # compile_exits' argument shadows the name


def exit_head_layers(multi):
    """Names of the exit heads' layers of a multi-exit model (outputs
    ``[exit_0, ..., final]``): the layers some exit output uses and the final
    output does not, in the model's layer order. To prune only the heads:
    ``mntk.global_pruning.GlobalPruning(multi, layers=exit_head_layers(multi),
    hold_zeros=True)``."""
    graph.exit_structure(multi)  # validates the multi-exit layout
    backbone = graph.ancestor_nodes([multi.outputs[-1]])
    heads = {id(node.layer) for node in graph.ancestor_nodes(multi.outputs[:-1]) - backbone}
    return [layer.name for layer in multi.layers if id(layer) in heads]


def _from_logits(loss):
    loss = keras.losses.get(loss)
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    return bool(config.get("from_logits", getattr(loss, "from_logits", False)))


def _refuse_softmax_outputs(multi, losses):
    """A softmax output with a from-logits loss trains on probabilities as if
    they were logits, silently wrong: refuse it with the fix."""
    from mntk.softmax_heads import softmax_head
    for index, (name, loss) in enumerate(zip(multi.output_names, losses)):
        head = softmax_head(multi, index)
        if head and _from_logits(loss):
            raise ValueError(
                f"compile_exits: output {name!r} of {multi.name!r} is the softmax of "
                f"layer {head[0].name!r} but its loss takes logits. Build the model "
                "with mntk.early_exit.add_exits (it outputs the logits), or rewire it "
                "with mntk.softmax_heads.to_logits(multi), or give that output a loss with "
                "from_logits=False.")


def compile_exits(multi, optimizer="adam", loss=None, exit_weights=None,
                  metrics=("accuracy",), freeze_backbone=False,
                  bn_trainable=False, **compile_kwargs):
    """Compiles a multi-exit model with one weighted loss per output.

    Args:
      multi: model from ``add_exits`` (outputs ``[exit_0, ..., final]``).
      optimizer: any Keras optimizer (or its name).
      loss: one loss for every output (default sparse categorical
        cross-entropy from logits), or a list/dict with one per output (e.g.
        ``mntk.losses.ConfidenceWeighted()`` for the exits and
        ``AdaptiveLabelSmoothing(...)`` per head).
      exit_weights: ``None`` (all 1), a list with one float per output, or an
        ``ExitWeightRamp`` (pass the same object to ``fit(callbacks=[...])``).
      metrics: metrics for every output.
      freeze_backbone: train only the heads (OSI-AI); see ``freeze_backbone``.
      bn_trainable: with ``freeze_backbone``, keep backbone BN layers training.

    Returns ``multi``, compiled (compiling, and ``freeze_backbone``, change
    ``multi`` in place; ``add_exits`` gives it its own copy of the backbone, so
    the model the exits were added to is not affected). The loss weights are
    reachable as ``[l.weight for l in multi.loss]``. An output that applies
    softmax, with a loss that takes logits, is refused.
    """
    structure = graph.exit_structure(multi)
    names = list(multi.output_names)
    n_outputs = structure.num_exits + 1
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(loss, dict):
        unknown = sorted(set(loss) - set(names))
        if unknown or len(loss) != n_outputs:
            raise ValueError(
                f"compile_exits: loss dict keys {sorted(loss)} must be exactly "
                f"the output names {names}.")
        losses = [loss[name] for name in names]
    elif isinstance(loss, (list, tuple)):
        if len(loss) != n_outputs:
            raise ValueError(
                f"compile_exits: got {len(loss)} losses for {n_outputs} outputs "
                f"{names}; give one per output or a single loss.")
        losses = list(loss)
    else:
        losses = [loss] * n_outputs
    ramp = None
    if exit_weights is None:
        weights = [1.0] * n_outputs
    elif isinstance(exit_weights, ExitWeightRamp):
        ramp = exit_weights
        weights = ramp.weights_at(0)
    else:
        weights = [float(w) for w in exit_weights]
    if len(weights) != n_outputs or not np.all(np.isfinite(weights)):
        raise ValueError(
            f"compile_exits: exit_weights {weights} must be {n_outputs} finite "
            f"numbers, one per output {names}.")
    _refuse_softmax_outputs(multi, losses)
    wrapped = [ExitWeightedLoss(l, w, name=f"{name}_weighted")
               for l, w, name in zip(losses, weights, names)]
    if ramp is not None:
        ramp.weights = [w.weight for w in wrapped]
    if freeze_backbone:
        _freeze(multi, bn_trainable=bn_trainable)
    if metrics is not None and not isinstance(metrics, (dict, list)):
        metrics = list(metrics)
    multi.compile(optimizer=optimizer, loss=wrapped, metrics=metrics,
                  **compile_kwargs)
    return multi
