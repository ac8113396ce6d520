"""The orthogonality regularizer family: its base class, SO, DSO, MC and NormalizedMC.

From Bansal, Chen, Wang, "Can We Gain More from Orthogonality Regularizations
in Training Deep CNNs?" (NeurIPS 2018, arXiv 1810.09102). A kernel is reshaped
to W with one column per filter (see `mntk.orthogonality`), and

- SO:   coefficient * ||W^T W - I||_F^2;
- DSO:  coefficient * (||W^T W - I||_F^2 + ||W W^T - I||_F^2);
- MC:   coefficient * ||W^T W - I||_inf (largest absolute entry, raw W);
- NormalizedMC: coefficient * max_{i != j} |cos(w_i, w_j)| (scale-invariant
  mutual coherence of the column-normalized W; not the paper's MC).

SRIP, the family's spectral-norm member, and `apply_srip` are
`mntk.regularizers.srip`. `orthogonality_regularizers(model)` finds every
member a model uses: its layers' regularizers and the ones `apply_srip`
attached (recorded in `_ATTACHED`).
"""
import weakref

import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras
from mntk.orthogonality import LAYOUTS, gram_residual, kernel_matrix, unwrap_layer

# model -> the SRIP regularizers `apply_srip` attached to it (for discovery by
# CoefficientSchedule); weak, so a dropped model is not kept alive.
_ATTACHED = weakref.WeakKeyDictionary()


class OrthogonalityRegularizer(keras.regularizers.Regularizer):
    """Base: coefficient (a non-trainable tf.Variable) times `penalty(kernel)`."""

    def __init__(self, coefficient=1e-2, layout="auto"):
        if layout not in LAYOUTS:
            raise ValueError(f"{type(self).__name__}: layout={layout!r} is not one of {LAYOUTS}.")
        self.layout = layout
        # Lifted out of any function being traced; under a strategy scope this
        # becomes a mirrored variable that callbacks assign from cross-replica.
        with tf.init_scope():
            self.coefficient = tf.Variable(
                float(coefficient), trainable=False, dtype=tf.float32,
                name=f"{type(self).__name__.lower()}_coefficient")

    def __call__(self, kernel):
        return self.coefficient * self.penalty(kernel)

    def penalty(self, kernel, layout=None):
        """The unscaled penalty of one kernel (a float32 scalar)."""
        raise NotImplementedError

    def _matrix(self, kernel, layout):
        return kernel_matrix(kernel, layout or self.layout)

    def get_config(self):
        return {"coefficient": float(keras.backend.get_value(self.coefficient)),
                "layout": self.layout}


@keras.utils.register_keras_serializable(package="mntk")
class SO(OrthogonalityRegularizer):
    """Soft orthogonality: coefficient * ||W^T W - I||_F^2 (Bansal et al. 2018)."""

    def penalty(self, kernel, layout=None):
        w = self._matrix(kernel, layout)
        return tf.reduce_sum(tf.square(gram_residual(w, smaller=False)))


@keras.utils.register_keras_serializable(package="mntk")
class DSO(OrthogonalityRegularizer):
    """Double soft orthogonality: coefficient * (||W^T W - I||_F^2 + ||W W^T - I||_F^2)."""

    def penalty(self, kernel, layout=None):
        w = self._matrix(kernel, layout)
        return (tf.reduce_sum(tf.square(gram_residual(w, smaller=False)))
                + tf.reduce_sum(tf.square(gram_residual(w, smaller=False, transpose=True))))


@keras.utils.register_keras_serializable(package="mntk")
class MC(OrthogonalityRegularizer):
    """Mutual-coherence regularizer as in the SRIP paper (Bansal et al. 2018,
    arXiv 1810.09102, Sec. 3.2): coefficient * ||W^T W - I||_inf, the largest
    absolute entry of the Gram residual of the raw reshaped kernel W (one
    column per filter). Not scale-invariant: it also pulls column norms to 1.
    For the scale-invariant coherence of the normalized columns see
    `NormalizedMC`."""

    def penalty(self, kernel, layout=None):
        w = self._matrix(kernel, layout)
        return tf.reduce_max(tf.abs(gram_residual(w, smaller=False)))


@keras.utils.register_keras_serializable(package="mntk")
class NormalizedMC(OrthogonalityRegularizer):
    """Column-normalized mutual coherence: coefficient * max_{i != j}
    |<w_i, w_j>| / (||w_i|| ||w_j||) over the columns of W (the classical
    coherence of a dictionary). Scale-invariant: it only decorrelates filter
    directions, unlike the paper's `MC`."""

    def penalty(self, kernel, layout=None):
        w = tf.math.l2_normalize(self._matrix(kernel, layout), axis=0)
        cosines = tf.abs(tf.matmul(w, w, transpose_a=True))
        off_diagonal = cosines * (1.0 - tf.eye(tf.shape(cosines)[0], dtype=cosines.dtype))
        return tf.reduce_max(off_diagonal)


def _iter_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def orthogonality_regularizers(model):
    """Every orthogonality regularizer of a model: layer regularizers and apply_srip's."""
    ensure_tf_keras(model)
    found, seen = [], set()
    for layer in _iter_layers(model):
        inner = unwrap_layer(layer)
        for attr in ("kernel_regularizer", "depthwise_regularizer", "pointwise_regularizer"):
            candidate = getattr(inner, attr, None)
            if isinstance(candidate, OrthogonalityRegularizer) and id(candidate) not in seen:
                seen.add(id(candidate))
                found.append(candidate)
    for candidate in _ATTACHED.get(model, []):
        if id(candidate) not in seen:
            seen.add(id(candidate))
            found.append(candidate)
    return found
