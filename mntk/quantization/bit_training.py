"""Training learned bit widths as Texas-EIC did: their own learning rate,
updated only in alternate tenths of an epoch, and loss phases.

- ``BitWidthAdam``: Adam (Kingma & Ba, ICLR 2015, arXiv 1412.6980) whose
  learned bit-width variables (the ``*_gamma`` of
  ``LearnedPrecisionWeightQuantizer`` / ``LearnedPrecisionActivationQuantizer``,
  the entry's ``bits_scale``) have their own learning rate and their own Adam
  state, stepped only while a gate is open. Texas-EIC used two Adam
  optimizers: 3e-6 on weights and ranges, 1e-3 on the bit scales
  (adj_quant/scripts/trainer/trainer.py: ``opt``, ``opt2``).
- ``bits_step_open``: the entry's schedule of the bit updates
  (trainer.py:240-244): an epoch is cut into ten tenths of ``S // 10`` steps;
  in tenth k (0-based) the bits are trained iff ``k % 2 == 0`` (the 1st, 3rd,
  ... tenths), the other variables in every step.
- ``CrossEntropyWithLogitDistance``: the entry's loss without its cost term,
  ``alpha * CE + d * mean_batch(sum_k sqrt((z_k - t_k)^2 + 1e-5))`` with t the
  float model's logits (trainer.py:69-159, ``loss_kd`` with d = 0.01).
- ``PrecisionPhases``: a callback that sets ``alpha``, the cost term's
  coefficient ``beta`` and whether the bits train, per epoch, from a list of
  phases ``(epochs, alpha, beta, train_bits)`` (the entry's README:101-144:
  3 epochs alpha 7 beta 85, then beta 115). The cost term itself is
  ``mntk.losses.CostTarget(model, score=0.18, coefficient=phases.beta,
  relative=False)``: ``sign(M - 0.18) * beta * M``.
"""
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from mntk.compat import keras

__all__ = ["BitWidthAdam", "bits_step_open", "is_bit_width_variable",
           "CrossEntropyWithLogitDistance", "Phase", "PrecisionPhases"]

#: The bit tenths of an epoch: "all" trains bits every step, "alternate" in
#: tenths 0, 2, 4, 6, 8 only (Texas-EIC's ``--iter_train --iter_train_freq 2``).
BIT_TENTHS = ("all", "alternate")


def is_bit_width_variable(variable) -> bool:
    """True for a learned quantizer's bit-width variable (``..._gamma``; the
    naming ``mntk.quantization.freeze_precision`` also relies on)."""
    return variable.name.split("/")[-1].split(":")[0].endswith("_gamma")


def bits_step_open(step, steps_per_epoch, tenths="alternate"):
    """Whether step ``step`` (0-based, counted from the start of training)
    updates the bits: its tenth ``k = (step % S) * 10 // S`` is even.

    Works on Python ints and on tensors (graph mode). ``S`` steps an epoch.
    """
    if tenths == "all":
        return True if isinstance(step, int) else tf.constant(True)
    if tenths != "alternate":
        raise ValueError(f"bits_step_open: tenths={tenths!r}; use one of {BIT_TENTHS}.")
    if isinstance(step, int):
        return ((step % steps_per_epoch) * 10 // steps_per_epoch) % 2 == 0
    step = tf.cast(step, tf.int64)
    s = tf.constant(int(steps_per_epoch), tf.int64)
    return tf.equal(tf.math.floormod((tf.math.floormod(step, s) * 10) // s, 2), 0)


@keras.utils.register_keras_serializable(package="mntk")
class BitWidthAdam(keras.optimizers.Adam):
    """Adam with a separate learning rate, Adam state and gate for the bit widths.

    Variables that are not bit widths follow Adam at ``learning_rate``. A bit
    width b (``is_bit_width_variable``) follows its own Adam at
    ``bits_learning_rate``, with its own step count t_b, and only in the
    steps where the gate is open (``bits_enabled`` and ``bits_step_open``):

        open:   t_b += 1,  m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
                b <- b - lr_b * sqrt(1 - b2^t_b) / (1 - b1^t_b) * m / (sqrt(v) + eps)
        closed: nothing changes (b, m, v, t_b),

    as the entry's second Adam, which ran only in the tenths that trained the
    bits. ``bits_enabled`` (a variable; ``PrecisionPhases`` sets it per phase)
    closes the gate for whole epochs.

    Args:
      learning_rate: Adam's rate for every other variable.
      bits_learning_rate: the bit widths' rate (Texas-EIC: 1e-3).
      steps_per_epoch: S of the tenths rule; required with
        ``bits_tenths="alternate"``.
      bits_tenths: "alternate" (the entry) or "all".
      **kwargs: ``keras.optimizers.Adam``'s (beta_1, epsilon, use_ema, ...).
    """

    def __init__(self, learning_rate=0.001, bits_learning_rate=0.001, steps_per_epoch=None,
                 bits_tenths="all", name="BitWidthAdam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if bits_tenths not in BIT_TENTHS:
            raise ValueError(f"BitWidthAdam: bits_tenths={bits_tenths!r}; use one of "
                             f"{BIT_TENTHS}.")
        if bits_tenths == "alternate" and not (steps_per_epoch and int(steps_per_epoch) >= 10):
            raise ValueError(f"BitWidthAdam: bits_tenths='alternate' needs steps_per_epoch "
                             f">= 10 (got {steps_per_epoch!r}): an epoch is cut in tenths.")
        if not float(bits_learning_rate) > 0:
            raise ValueError(f"BitWidthAdam: bits_learning_rate={bits_learning_rate!r} "
                             "must be > 0.")
        self.bits_learning_rate = float(bits_learning_rate)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.bits_tenths = bits_tenths
        self.bits_enabled = tf.Variable(True, trainable=False, name="bits_enabled")

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_bits_built", False):
            return
        self._bits_built = True
        # t_b of each bit-width variable (scalar slots: checkpointed with m, v)
        self._bit_steps = {}
        for var in var_list:
            if is_bit_width_variable(var):
                self._bit_steps[self._var_key(var)] = self.add_variable_from_reference(
                    var, "bit_steps", shape=())

    def bits_open(self):
        """The gate of the current step (a boolean tensor)."""
        open_ = tf.convert_to_tensor(self.bits_enabled)
        if self.bits_tenths == "all":
            return open_
        return tf.logical_and(open_, bits_step_open(self.iterations, self.steps_per_epoch,
                                                    self.bits_tenths))

    def update_step(self, gradient, variable):
        key = self._var_key(variable)
        if key not in getattr(self, "_bit_steps", {}):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        gate = tf.cast(self.bits_open(), dtype)
        t = self._bit_steps[key]
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        gradient = tf.convert_to_tensor(gradient)
        t.assign_add(gate)
        step = tf.maximum(t, 1.0)  # closed before the first open step: no division by 0
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        m.assign_add(gate * (1 - b1) * (gradient - m))
        v.assign_add(gate * (1 - b2) * (tf.square(gradient) - v))
        rate = self.bits_learning_rate * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        variable.assign_sub(gate * rate * m / (tf.sqrt(v) + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update({"bits_learning_rate": self.bits_learning_rate,
                       "steps_per_epoch": self.steps_per_epoch,
                       "bits_tenths": self.bits_tenths})
        return config


@keras.utils.register_keras_serializable(package="mntk")
class CrossEntropyWithLogitDistance(keras.losses.Loss):
    """Texas-EIC's loss without the cost term (trainer.py:69-159):

        alpha * CE(y_s, z) + d * sum_k sqrt((z_k - t_k)^2 + eps)       (mean over the batch)

    z the student's logits, t the float teacher's, y_s the one-hot label
    smoothed as ``(1 - s) * y + s / K`` (Szegedy et al. 2016, arXiv 1512.00567;
    TF-slim's and Keras' ``label_smoothing``; the entry's 8-bit QAT used s = 0.1)
    from integer labels. With ``distance > 0``,
    ``y_true`` rows are ``[label, teacher logits...]`` (as ``mntk.train``'s
    ``fit(teacher=...)`` and ``mntk.losses.Distillation`` build them); with
    ``distance == 0`` they are the integer labels. ``alpha`` may be a
    ``tf.Variable`` (``PrecisionPhases.alpha``), read at every step.
    """

    def __init__(self, alpha=1.0, distance=0.01, epsilon=1e-5, label_smoothing=0.0,
                 name="ce_logit_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        if float(distance) < 0 or float(epsilon) <= 0 or not 0 <= float(label_smoothing) < 1:
            raise ValueError(f"CrossEntropyWithLogitDistance: distance={distance!r} must be "
                             f">= 0, epsilon={epsilon!r} > 0 and label_smoothing="
                             f"{label_smoothing!r} in [0, 1).")
        self.label_smoothing = float(label_smoothing)
        self.alpha = alpha if isinstance(alpha, tf.Variable) else float(alpha)
        self.distance, self.epsilon = float(distance), float(epsilon)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        if self.distance:
            labels, teacher = y_true[:, 0], y_true[:, 1:]
        else:
            labels = tf.reshape(y_true, [-1])
        if self.label_smoothing:
            k = tf.shape(y_pred)[-1]
            targets = tf.one_hot(tf.cast(labels, tf.int32), k) * (1.0 - self.label_smoothing) \
                + self.label_smoothing / tf.cast(k, tf.float32)
            ce = -tf.reduce_sum(targets * tf.nn.log_softmax(y_pred), axis=-1)
        else:
            ce = keras.losses.sparse_categorical_crossentropy(
                tf.cast(labels, tf.int32), y_pred, from_logits=True)
        loss = tf.cast(self.alpha, tf.float32) * ce
        if self.distance:
            loss += self.distance * tf.reduce_sum(
                tf.sqrt(tf.square(y_pred - teacher) + self.epsilon), axis=-1)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": float(self.alpha.numpy())
                       if isinstance(self.alpha, tf.Variable) else self.alpha,
                       "distance": self.distance, "epsilon": self.epsilon,
                       "label_smoothing": self.label_smoothing})
        return config


class Phase(NamedTuple):
    """One loss phase: ``epochs`` with loss weight ``alpha`` on the task loss,
    ``beta`` on the cost term, bits trained or not."""
    epochs: int
    alpha: float
    beta: float
    train_bits: bool = True


def _phases(phases) -> Sequence[Phase]:
    out = []
    for i, p in enumerate(phases):
        if isinstance(p, dict):
            p = Phase(**p)
        p = Phase(*p)
        if int(p.epochs) < 1 or float(p.alpha) < 0 or float(p.beta) < 0:
            raise ValueError(f"PrecisionPhases: phase {i} {tuple(p)!r} needs epochs >= 1, "
                             "alpha >= 0 and beta >= 0 (epochs, alpha, beta, train_bits).")
        out.append(Phase(int(p.epochs), float(p.alpha), float(p.beta), bool(p.train_bits)))
    if not out:
        raise ValueError("PrecisionPhases: give at least one phase (epochs, alpha, beta, "
                         "train_bits).")
    return out


class PrecisionPhases(keras.callbacks.Callback):
    """Sets the loss weights and the bits' gate from the phase of each epoch.

    ``alpha`` and ``beta`` are non-trainable variables: build the loss with
    them (``CrossEntropyWithLogitDistance(alpha=phases.alpha)``,
    ``CostTarget(..., coefficient=phases.beta, relative=False)``) and the
    callback assigns them at every epoch's start, and ``optimizer.bits_enabled``
    (a ``BitWidthAdam``; default: the model's) from ``train_bits``. Epoch e is
    in phase i when ``sum(epochs[:i]) <= e < sum(epochs[:i+1])``; a resumed
    fit starts at its epoch and so in its phase.
    """

    def __init__(self, phases, optimizer=None):
        super().__init__()
        self.phases = _phases(phases)
        self.optimizer = optimizer
        self.alpha = tf.Variable(self.phases[0].alpha, trainable=False, name="phase_alpha")
        self.beta = tf.Variable(self.phases[0].beta, trainable=False, name="phase_beta")

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase(self, epoch: int) -> Phase:
        ends = np.cumsum([p.epochs for p in self.phases])
        i = int(np.searchsorted(ends, int(epoch), side="right"))
        return self.phases[min(i, len(self.phases) - 1)]

    def on_epoch_begin(self, epoch, logs=None):
        p = self.phase(epoch)
        self.alpha.assign(p.alpha)
        self.beta.assign(p.beta)
        optimizer = self.optimizer or getattr(self.model, "optimizer", None)
        gate = getattr(optimizer, "bits_enabled", None)
        if gate is None:
            if p.train_bits:
                return  # a plain optimizer trains the bits in every step
            raise ValueError("PrecisionPhases: a phase with train_bits=False needs a "
                             "BitWidthAdam optimizer (its bits_enabled gate); compile the "
                             "model with mntk.quantization.BitWidthAdam.")
        gate.assign(p.train_bits)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["phase_alpha"] = float(self.alpha.numpy())
            logs["phase_beta"] = float(self.beta.numpy())
