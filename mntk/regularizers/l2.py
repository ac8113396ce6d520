"""Coupled L2 weight decay as a model loss: `apply_l2`.

``coefficient / 2 * sum w^2`` over a chosen set of trainable variables (all,
all but biases, kernels only), the torch SGD ``weight_decay`` the KAIST,
OSI-AI and TTQ entries used, unlike Keras' decoupled ``weight_decay``.
"""
import tensorflow as tf

from mntk.compat import ensure_tf_keras


L2_ON = ("all", "no_biases", "kernels")


def _l2_wanted(variable, on):
    name = variable.name.split("/")[-1].split(":")[0]
    if on == "all":
        return True
    if on == "no_biases":     # OSI: every parameter but conv/dense biases and BN beta
        return name not in ("bias", "beta")
    # TTQ: W only, plus the quantizer scales flagged to decay like W
    # (TernaryWeightQuantizer(decay_scales=True), the official code's choice)
    return name in ("kernel", "depthwise_kernel", "pointwise_kernel") or \
        bool(getattr(variable, "_mntk_l2_as_kernel", False))


def apply_l2(model, coefficient, on="all", name="l2"):
    """Coupled L2 weight decay as a model loss: ``coefficient / 2 * sum w^2``
    over the chosen trainable variables, so each gets ``coefficient * w`` added
    to its gradient before the optimizer's momentum (torch SGD's
    ``weight_decay``, which KAIST, OSI-AI and the TTQ code used), unlike
    Keras' decoupled ``weight_decay`` argument.

    Args:
      coefficient: the weight decay (KAIST 1e-5, OSI 1e-5, TTQ 2e-4).
      on: "all" trainable variables (KAIST), "no_biases" (OSI-AI: biases and
        BN beta excluded, BN gamma kept) or "kernels" (the TTQ code's ``.*/W``;
        with ``TernaryWeightQuantizer(decay_scales=True)`` its Wp and Wn too).
      name: the metric name of the unscaled sum of squares.

    Returns: the list of variables covered.
    """
    ensure_tf_keras(model)
    if on not in L2_ON:
        raise ValueError(f"apply_l2: on={on!r} must be one of {L2_ON}.")
    if not (float(coefficient) >= 0):
        raise ValueError(f"apply_l2: coefficient={coefficient!r} must be >= 0.")
    chosen = [v for v in model.trainable_variables if _l2_wanted(v, on)]
    if not chosen:
        raise ValueError(f"apply_l2: model {model.name!r} has no trainable variable for "
                         f"on={on!r}.")
    scale = float(coefficient) / 2.0

    def l2_loss():
        return scale * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                 for v in chosen])

    model.add_loss(l2_loss)
    return chosen
