"""Losses for learned precision: the Texas-EIC cost term and distillation.

Re-exported as ``mntk.losses.CostTarget`` and ``mntk.losses.Distillation``.
"""
import numpy as np
import tensorflow as tf

from mntk import wrapped
from mntk.compat import keras


def _learned_bit_terms(model, kind):
    """(continuous bits tensor, element count) of each learned quantizer."""
    from mntk.quantization.learned import (LearnedPrecisionActivationQuantizer,
                                           LearnedPrecisionWeightQuantizer)
    terms = []
    for layer in wrapped.quantize_wrappers(model):
        if kind in ("weights", "all"):
            for w in wrapped.weight_quantizers(layer):
                if isinstance(w.quantizer, LearnedPrecisionWeightQuantizer):
                    bits = w.quantizer.bits_tensor(w.variables)
                    per_channel = float(np.prod(w.weight.shape)) / int(bits.shape[0])
                    terms.append((bits, per_channel))
        if kind in ("activations", "all"):
            acts = [a for a in wrapped.activation_quantizers(layer)
                    if a.kind == "post_activation"] + wrapped.output_quantizers(layer)
            for a in acts:
                if isinstance(a.quantizer, LearnedPrecisionActivationQuantizer) and a.variables:
                    terms.append((a.quantizer.bits_tensor(a.variables), 1.0))
    return terms


def mean_learned_bits(model, kind="weights"):
    """Differentiable mean bits of the learned quantizers (weights: parameter-weighted)."""
    terms = _learned_bit_terms(model, kind)
    if not terms:
        raise ValueError(f"mean_learned_bits: model {model.name!r} has no learned-"
                         f"precision {kind} quantizers; quantize it with "
                         "LearnedPrecisionScheme().")
    total = tf.add_n([tf.reduce_sum(b) * w for b, w in terms])
    count = sum(float(np.prod(b.shape)) * w for b, w in terms)
    return total / count


_MEASURES = ("score", "weight_bits", "bits")


@keras.utils.register_keras_serializable(package="mntk")
class CostTarget:
    """Texas-EIC cost term: ``coefficient * sign(c - target) * c / target``
    (``relative=False``: ``coefficient * sign(c - target) * c``, the entry's
    ``sign(M - 0.18) * beta * M``).

    Above target the term pushes ``c`` down; below target the sign flips and it
    pushes it up, so the model settles at the target instead of collapsing to
    min_bits (trainer.py:69-159: ``sign(M - 0.18) * beta * M``; here divided by
    the target so one ``coefficient`` fits any scale).

    ``c`` is one of
    - ``measure="score"`` (``CostTarget(model, score=0.18)``): the MicroNet
      score M = P / P_base + F / M_base of the model at its current learned
      bits, differentiable in both weight and activation bits
      (``mntk.quantization.score.DifferentiableScore``: per-channel weight
      storage, multiplies at a straight-through max(b_w, b_in) whose gradient
      is 0.3 b_w + 0.7 b_in, adds at 32 bits). ``task`` picks the baselines
      (default "imagenet", Texas-EIC's).
    - ``measure="weight_bits"`` (``target=4.0``, the default): the
      parameter-weighted mean weight bits; ``include_activations=True``
      averages it with the mean activation bits.
    - ``measure="bits"`` (``CostTarget(model, bits=4.0)``): the same as
      weight_bits with ``include_activations=True``.

    Use: ``model.add_loss(CostTarget(q, score=0.18))`` (a callable with no
    arguments, as Keras ``add_loss`` accepts), or add ``term()`` to a custom
    loss; ``value()`` is the current ``c``. ``coefficient`` may be a
    ``tf.Variable`` (``mntk.quantization.PrecisionPhases.beta``), read at
    every step.
    """

    def __init__(self, model=None, target=None, coefficient=0.1, measure=None,
                 include_activations=False, score=None, bits=None, task="imagenet",
                 relative=True):
        given = [n for n, v in (("target", target), ("score", score), ("bits", bits))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"CostTarget: give one of target=, score=, bits=; got {given}.")
        if score is not None:
            measure, target = measure or "score", score
        elif bits is not None:
            measure, target, include_activations = measure or "bits", bits, True
        measure = measure or "weight_bits"
        target = 4.0 if target is None else target
        if measure not in _MEASURES:
            raise ValueError(f"CostTarget: measure={measure!r}; use one of {_MEASURES}.")
        if measure == "bits":
            include_activations = True
        if not float(target) > 0:
            raise ValueError(f"CostTarget: target={target!r} must be > 0.")
        self.model = model
        self.target = float(target)
        self.coefficient = coefficient if isinstance(coefficient, tf.Variable) \
            else float(coefficient)
        self.relative = bool(relative)
        self.measure = measure
        self.include_activations = bool(include_activations)
        self.task = task
        self._score = None
        if model is not None and measure == "score":
            from mntk.quantization.score import DifferentiableScore
            self._score = DifferentiableScore(model, task=task)

    def value(self):
        if self.model is None:
            raise ValueError("CostTarget has no model: build it as CostTarget(model, ...) "
                             "(a config round-trip keeps only the settings).")
        if self.measure == "score":
            return self._score()
        bits = mean_learned_bits(self.model, "weights")
        if self.include_activations:
            bits = 0.5 * (bits + mean_learned_bits(self.model, "activations"))
        return bits

    def __call__(self):
        current = self.value()
        sign = tf.stop_gradient(tf.sign(current - self.target))
        scaled = current / self.target if self.relative else current
        return tf.cast(self.coefficient, scaled.dtype) * sign * scaled

    def get_config(self):
        coefficient = float(self.coefficient.numpy()) \
            if isinstance(self.coefficient, tf.Variable) else self.coefficient
        return {"target": self.target, "coefficient": coefficient, "relative": self.relative,
                "measure": self.measure, "task": self.task,
                "include_activations": self.include_activations}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.utils.register_keras_serializable(package="mntk")
class Distillation(keras.losses.Loss):
    """Hinton et al. (2015, arXiv 1503.02531) distillation from a float teacher.

    loss = (1 - alpha) * CE(y, student) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))

    ``y_true`` are integer labels; the teacher's logits are computed from the
    inputs beforehand: fit on ``y_true`` of shape (batch, classes + 1) =
    [label, teacher logits...], built by ``loss.targets(x, y)``. A teacher
    whose output is a softmax (a ``keras.applications`` classifier) is rewired
    to its logits (``mntk.softmax_heads.to_logits``, same weights): softening its
    probabilities again with T would be wrong. The student's predictions must
    be logits (``from_logits=True``), e.g. the QAT copy of a to_logits model.
    """

    def __init__(self, teacher=None, temperature=4.0, alpha=0.5, from_logits=True,
                 name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"Distillation: alpha={alpha!r} must be in [0, 1].")
        if isinstance(teacher, keras.Model) and getattr(teacher, "_is_graph_network", False):
            from mntk.softmax_heads import softmax_head, to_logits
            if softmax_head(teacher):
                teacher = to_logits(teacher)
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int32)
        teacher_logits = tf.cast(y_true[:, 1:], y_pred.dtype)
        ce = keras.losses.sparse_categorical_crossentropy(
            labels, y_pred, from_logits=self.from_logits)
        t = self.temperature
        p_teacher = tf.nn.softmax(teacher_logits / t)
        log_student = tf.nn.log_softmax(y_pred / t)
        kl = tf.reduce_sum(p_teacher * (tf.math.log(p_teacher + 1e-12) - log_student), -1)
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl

    def targets(self, x, y):
        """[label, teacher logits] rows for ``fit(x, loss.targets(x, y))``."""
        logits = self.teacher.predict(x, verbose=0)
        return np.concatenate([np.asarray(y, np.float32).reshape(-1, 1), logits], 1)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "alpha": self.alpha,
                       "from_logits": self.from_logits})
        return config
