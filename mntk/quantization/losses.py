"""Losses for learned precision: the Texas-EIC cost term and distillation.

Re-exported as ``mntk.losses.CostTarget`` and ``mntk.losses.Distillation``.
"""
import numpy as np
import tensorflow as tf

from mntk.compat import keras


def _learned_bit_terms(model, kind):
    """(continuous bits tensor, element count) of each learned quantizer."""
    from mntk.quantization.learned import (LearnedPrecisionActivationQuantizer,
                                           LearnedPrecisionWeightQuantizer, _bits)
    terms = []
    for layer in model.layers:
        if kind in ("weights", "all"):
            for weight, q, qvars in getattr(layer, "_weight_vars", []):
                if isinstance(q, LearnedPrecisionWeightQuantizer):
                    bits = _bits(qvars["gamma"], q.min_bits, q.max_bits)
                    per_channel = float(np.prod(weight.shape)) / int(bits.shape[0])
                    terms.append((bits, per_channel))
        if kind in ("activations", "all"):
            for act in getattr(layer, "_quantize_activations", []):
                q = act.quantizer
                qvars = getattr(act, "_post_activation_vars", None)
                if isinstance(q, LearnedPrecisionActivationQuantizer) and qvars:
                    terms.append((_bits(qvars["gamma"], q.min_bits, q.max_bits), 1.0))
            outs = getattr(layer, "_output_quantizers", None) or []
            if outs and isinstance(outs[0], LearnedPrecisionActivationQuantizer):
                q, qvars = outs[0], layer._output_quantizer_vars
                terms.append((_bits(qvars["gamma"], q.min_bits, q.max_bits), 1.0))
    return terms


def mean_learned_bits(model, kind="weights"):
    """Differentiable mean bits of the learned quantizers (weights: parameter-weighted)."""
    terms = _learned_bit_terms(model, kind)
    if not terms:
        raise ValueError(f"mean_learned_bits: model {model.name!r} has no learned-"
                         "precision quantizers; quantize it with LearnedPrecisionScheme().")
    total = tf.add_n([tf.reduce_sum(b) * w for b, w in terms])
    count = sum(float(np.prod(b.shape)) * w for b, w in terms)
    return total / count


@keras.utils.register_keras_serializable(package="mntk")
class CostTarget:
    """Texas-EIC cost term: ``coefficient * sign(c - target) * c / target``.

    ``c`` is the parameter-weighted mean weight bits of the learned-precision
    quantizers (``measure="weight_bits"``), or the bit-weighted weight storage
    relative to ``reference_bits`` scaled into a MicroNet-style score
    (``measure="score"``: c = score_at_8bit * mean_bits / 8, with
    ``score_at_8bit`` from ``mntk.cost.estimate``). Above target the term
    pushes bits down; below target the sign flips and it pushes them up, so the
    model settles at the target instead of collapsing to min_bits.

    Use: ``model.add_loss(CostTarget(q, target=4.0))`` (a callable with no
    arguments, as Keras ``add_loss`` accepts), or add ``term()`` to a custom loss.
    """

    def __init__(self, model=None, target=4.0, coefficient=0.1, measure="weight_bits",
                 score_at_8bit=None, include_activations=False):
        if measure not in ("weight_bits", "score"):
            raise ValueError(f"CostTarget: measure={measure!r}; use 'weight_bits' or 'score'.")
        if measure == "score" and not score_at_8bit:
            raise ValueError("CostTarget(measure='score') needs score_at_8bit "
                             "(mntk.cost.estimate(q).score at 8-bit weights).")
        if float(target) <= 0:
            raise ValueError(f"CostTarget: target={target!r} must be > 0.")
        self.model = model
        self.target = float(target)
        self.coefficient = float(coefficient)
        self.measure = measure
        self.score_at_8bit = score_at_8bit
        self.include_activations = bool(include_activations)

    def value(self):
        bits = mean_learned_bits(self.model, "weights")
        if self.include_activations:
            bits = 0.5 * (bits + mean_learned_bits(self.model, "activations"))
        if self.measure == "score":
            return self.score_at_8bit * bits / 8.0
        return bits

    def __call__(self):
        current = self.value()
        sign = tf.stop_gradient(tf.sign(current - self.target))
        return self.coefficient * sign * current / self.target

    def get_config(self):
        return {"target": self.target, "coefficient": self.coefficient,
                "measure": self.measure, "score_at_8bit": self.score_at_8bit,
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
    to its logits (``mntk.prepare.to_logits``, same weights): softening its
    probabilities again with T would be wrong. The student's predictions must
    be logits (``from_logits=True``), e.g. the QAT copy of a to_logits model.
    """

    def __init__(self, teacher=None, temperature=4.0, alpha=0.5, from_logits=True,
                 name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"Distillation: alpha={alpha!r} must be in [0, 1].")
        if isinstance(teacher, keras.Model) and getattr(teacher, "_is_graph_network", False):
            from mntk.prepare import softmax_head, to_logits
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
