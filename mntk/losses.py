"""Losses of the MicroNet tricks: adaptive label smoothing and confidence weighting.

`AdaptiveLabelSmoothing` is the KAIST MicroNet entry's loss (2nd on CIFAR-100
in the NeurIPS 2019 MicroNet Challenge): label smoothing whose mass goes to the
classes that the classifier's weight vectors say are similar to the true one.
`ConfidenceWeighted` is the OSI-AI entry's head loss.
"""
import warnings

import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras
from mntk.orthogonality import layer_kernels, unwrap_layer

__all__ = ["AdaptiveLabelSmoothing", "AdaptiveSmoothingRefresh", "ConfidenceWeighted",
           "CostTarget", "Distillation",  # noqa: F822  (lazy, see __getattr__)
           "class_similarity"]

REFRESH_MODES = ("epoch", "step")


def class_similarity(kernel) -> tf.Tensor:
    """A (C, C): A[k, :] = softmax over j != k of |cos(w_j, w_k)|, A[k, k] = 0.

    w_j is the weight vector of class j: column j of a Keras Dense kernel
    (in, C) (a row of PyTorch's (C, in) weight), or of a 1x1 Conv2D
    classifier's kernel (1, 1, in, C) read as (in, C). No gradient flows through A.
    """
    kernel = tf.cast(kernel, tf.float32)
    kernel = tf.reshape(kernel, [-1, tf.shape(kernel)[-1]])
    w = tf.math.l2_normalize(tf.stop_gradient(kernel), axis=0)
    cosines = tf.abs(tf.matmul(w, w, transpose_a=True))
    num_classes = tf.shape(cosines)[0]
    # exp(-inf) = 0 removes the true class from its own softmax.
    diagonal = tf.linalg.diag(tf.fill([num_classes], float("-inf")))
    return tf.nn.softmax(cosines + diagonal, axis=-1)


def _is_sparse(y_true, num_classes):
    rank = y_true.shape.rank
    return not (rank is not None and rank >= 2 and y_true.shape[-1] == num_classes
                and num_classes != 1)


def _cross_entropy(targets, y_pred, from_logits):
    if from_logits:
        return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=y_pred)
    probs = tf.clip_by_value(y_pred, keras.backend.epsilon(), 1.0)
    return -tf.reduce_sum(targets * tf.math.log(probs), axis=-1)


def _refuse_softmax_classifier(layer, owner):
    """Raise when ``layer``'s logits reach the model output through a softmax."""
    from mntk.softmax_heads import softmax_after
    softmax = softmax_after(unwrap_layer(layer))
    if softmax is not None:
        raise ValueError(
            f"{owner}: classifier {unwrap_layer(layer).name!r} is followed by the "
            f"softmax of layer {softmax.name!r}, so the model outputs probabilities, "
            "not logits. Rewire it: model = mntk.softmax_heads.to_logits(model) and pass "
            "that model's classifier (or pass from_logits=False).")


@keras.utils.register_keras_serializable(package="mntk")
class AdaptiveLabelSmoothing(keras.losses.Loss):
    """Cross-entropy against similarity-weighted smoothed targets (KAIST entry).

    For true class k the target is 1 - epsilon; class i != k gets
    epsilon * A[k, i], with A = `class_similarity(classifier kernel)` (a softmax
    over j != k of |cos(w_j, w_k)|; no gradient through A). Rows sum to 1 and
    are never negative. For one-hot or soft labels y (mixup, CutMix) the target
    is (1 - epsilon) * y + epsilon * y A, the same rule applied by linearity.
    With all similarities equal it is uniform smoothing over the other classes,
    i.e. Keras `label_smoothing = epsilon * C / (C - 1)`.

    Note: the formula drawn in the entry's README has no exp in the numerator
    (|cos| / sum of |cos| minus terms) and can give negative targets; the
    entry's code uses the softmax above, which is what is implemented here.

    Args:
      classifier: the final Dense layer or 1x1 Conv2D classifier (MobileNetV3's
        `Logits`; also inside a tfmot wrapper), its kernel variable, or (after
        deserialization) the layer's name, resolved by `bind(model)` or by the
        refresh callback. With `from_logits=True` a classifier followed by a
        softmax (every `keras.applications` head) is refused: the model
        outputs probabilities. Rewire it first with
        `model = mntk.softmax_heads.to_logits(model)` (the same weights, logits out).
      epsilon: smoothing mass (0.3 in KAIST's dense training, 0.1 while pruning).
      from_logits: whether predictions are logits.
      refresh: "epoch" keeps A in a non-trainable variable recomputed at each
        epoch start by `loss.callback()` (KAIST; pass it to `fit`), and computed
        in the graph on first use if no refresh ran yet; "step" recomputes A
        in the graph at every call.
      num_classes: needed only when `classifier` is a name.
    """

    def __init__(self, classifier, epsilon=0.3, from_logits=True, refresh="epoch",
                 num_classes=None, name="adaptive_label_smoothing", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"AdaptiveLabelSmoothing: epsilon={epsilon!r} must be in [0, 1].")
        if refresh not in REFRESH_MODES:
            raise ValueError(
                f"AdaptiveLabelSmoothing: refresh={refresh!r} must be one of {REFRESH_MODES}.")
        self.epsilon = float(epsilon)
        self.from_logits = bool(from_logits)
        self.refresh = refresh
        self._kernel = None
        self.classifier_name = None
        if isinstance(classifier, str):
            self.classifier_name = classifier
        elif isinstance(classifier, tf.Variable):
            self._kernel = classifier
            self.classifier_name = classifier.name.split(":")[0].rsplit("/", 1)[0]
        else:
            ensure_tf_keras(classifier, "classifier layer")
            self._kernel = self._layer_kernel(classifier)
            self.classifier_name = unwrap_layer(classifier).name
            if self.from_logits:
                _refuse_softmax_classifier(classifier, "AdaptiveLabelSmoothing")
        if self._kernel is not None:
            num_classes = int(self._kernel.shape[-1])
        if num_classes is None:
            raise ValueError(
                "AdaptiveLabelSmoothing: give num_classes when the classifier "
                f"({classifier!r}) is a name.")
        if int(num_classes) < 2:
            raise ValueError(f"AdaptiveLabelSmoothing needs >= 2 classes, got {num_classes}.")
        self.num_classes = int(num_classes)
        self._callback_made = False
        self._warned = False
        with tf.init_scope():
            # ON_READ + MEAN: replicas may fill it in replica context (first
            # use); every replica computes it from the same mirrored kernel.
            sync = dict(synchronization=tf.VariableSynchronization.ON_READ,
                        aggregation=tf.VariableAggregation.MEAN)
            self.similarity = tf.Variable(
                tf.zeros([self.num_classes, self.num_classes]), trainable=False,
                name="class_similarity", **sync)
            # float, not bool: a MEAN over replicas must be defined for it.
            self.similarity_ready = tf.Variable(
                0.0, trainable=False, name="class_similarity_ready", **sync)

    @staticmethod
    def _layer_kernel(layer):
        kernels = [k for k, _, kind in layer_kernels(layer)
                   if kind == "dense" or (kind == "pointwise" and k.shape.rank == 4)]
        if len(kernels) != 1:
            raise ValueError(
                f"AdaptiveLabelSmoothing: classifier {layer.name!r} "
                f"({type(unwrap_layer(layer)).__name__}) must be a built Dense layer "
                "or 1x1 Conv2D; pass the model's final classifier (e.g. "
                "model.get_layer('logits')).")
        return kernels[0]

    # -- the classifier ---------------------------------------------------------
    def bind(self, model):
        """Resolve a classifier given by name (after loading) in `model`."""
        ensure_tf_keras(model)
        if self._kernel is not None:
            return self
        for layer in model.submodules:
            if isinstance(layer, keras.layers.Layer) and unwrap_layer(layer).name == self.classifier_name:
                self._kernel = self._layer_kernel(layer)
                return self
        raise ValueError(
            f"AdaptiveLabelSmoothing: model {model.name!r} has no layer named "
            f"{self.classifier_name!r}; pass the classifier layer explicitly.")

    @property
    def kernel(self):
        if self._kernel is None:
            raise ValueError(
                f"AdaptiveLabelSmoothing: classifier {self.classifier_name!r} is a name "
                "(the loss was deserialized); call `loss.bind(model)` or pass "
                "`loss.callback()` to fit before it needs the classifier's weights.")
        return self._kernel

    # -- A ----------------------------------------------------------------------
    def refresh_similarity(self):
        """Recompute A from the classifier's current weights (the epoch callback)."""
        self.similarity.assign(class_similarity(self.kernel))
        self.similarity_ready.assign(1.0)

    def callback(self):
        """A Keras callback that recomputes A at each epoch start; pass it to fit."""
        self._callback_made = True
        return AdaptiveSmoothingRefresh(self)

    def current_similarity(self):
        """A as used by the next call."""
        if self.refresh == "step":
            return class_similarity(self.kernel)
        if not self._callback_made and not self._warned and not self._stored_ready():
            self._warned = True
            warnings.warn(
                f"AdaptiveLabelSmoothing({self.classifier_name!r}, refresh='epoch') is "
                "used without its refresh callback: A is computed on first use and "
                "never refreshed. Pass `loss.callback()` to fit, or use refresh='step'.",
                stacklevel=3)

        def compute():
            fresh = class_similarity(self.kernel)
            with tf.control_dependencies([self.similarity.assign(fresh),
                                          self.similarity_ready.assign(1.0)]):
                return tf.identity(fresh)

        if self._kernel is None:  # loaded, not bound: only a stored A is usable
            check = tf.debugging.assert_greater(
                self.similarity_ready, 0.5, message=(
                    f"AdaptiveLabelSmoothing({self.classifier_name!r}) has no class "
                    "similarity yet and no classifier: call loss.bind(model)."))
            with tf.control_dependencies([check]):
                return tf.identity(self.similarity)
        return tf.cond(self.similarity_ready > 0.5,
                       lambda: tf.identity(self.similarity), compute)

    def _stored_ready(self):
        # Read eagerly even while a train function is traced: a loaded A counts.
        with tf.init_scope():
            return float(keras.backend.get_value(self.similarity_ready)) > 0.5

    def smoothed_targets(self, y_true, similarity=None):
        """(batch, C) targets: (1 - eps) y + eps * y A, y one-hot of sparse labels."""
        y_true = tf.convert_to_tensor(y_true)
        a = self.current_similarity() if similarity is None else similarity
        if _is_sparse(y_true, self.num_classes):
            labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
            y = tf.one_hot(labels, self.num_classes)
            spread = tf.gather(a, labels)
        else:
            y = tf.cast(y_true, tf.float32)
            spread = tf.matmul(y, a)
        return tf.stop_gradient((1.0 - self.epsilon) * y + self.epsilon * spread)

    def call(self, y_true, y_pred):
        targets = self.smoothed_targets(y_true)
        return _cross_entropy(targets, tf.cast(y_pred, tf.float32), self.from_logits)

    # -- serialization ----------------------------------------------------------
    def get_config(self):
        return {**super().get_config(), "classifier": self.classifier_name,
                "epsilon": self.epsilon, "from_logits": self.from_logits,
                "refresh": self.refresh, "num_classes": self.num_classes}

    def save_own_variables(self, store):
        """Keeps A in `.keras` files, so a loaded model gives the same loss."""
        store["0"] = keras.backend.get_value(self.similarity)
        store["1"] = keras.backend.get_value(self.similarity_ready)

    def load_own_variables(self, store):
        self.similarity.assign(store["0"])
        self.similarity_ready.assign(float(store["1"][()]))


@keras.utils.register_keras_serializable(package="mntk")
class AdaptiveSmoothingRefresh(keras.callbacks.Callback):
    """Recomputes A of one or more `AdaptiveLabelSmoothing` losses at each epoch start.

    Losses deserialized with a classifier name are bound to the trained model.
    Created by `AdaptiveLabelSmoothing.callback()`; pass `losses` to cover
    several outputs with one callback.
    """

    def __init__(self, losses):
        super().__init__()
        self.losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
        for loss in self.losses:
            if not isinstance(loss, AdaptiveLabelSmoothing):
                raise TypeError(
                    f"AdaptiveSmoothingRefresh takes AdaptiveLabelSmoothing losses, got "
                    f"{type(loss).__name__}.")
            loss._callback_made = True

    def on_epoch_begin(self, epoch, logs=None):
        for loss in self.losses:
            if loss._kernel is None:
                loss.bind(self.model)
            loss.refresh_similarity()

    def get_config(self):
        return {"losses": [keras.losses.serialize(loss) for loss in self.losses]}

    @classmethod
    def from_config(cls, config):
        return cls([keras.losses.deserialize(loss) for loss in config["losses"]])


@keras.utils.register_keras_serializable(package="mntk")
class ConfidenceWeighted(keras.losses.Loss):
    """OSI-AI's exit-head loss: per-example cross-entropy x (1 + max softmax).

    loss_n = CE(y_n, p_n) * (1 + max_c p_n,c), which weights the examples the
    head is already confident about more, so confident exits are right more
    often (OSI-AI MicroNet entry, 3rd on CIFAR-100). The weight is a constant
    (no gradient through max p) unless `weight_gradient=True`. Labels may be
    sparse integers or one-hot / soft.
    """

    def __init__(self, from_logits=True, weight_gradient=False,
                 name="confidence_weighted", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)
        self.weight_gradient = bool(weight_gradient)

    def call(self, y_true, y_pred):
        y_true = tf.convert_to_tensor(y_true)
        y_pred = tf.cast(y_pred, tf.float32)
        num_classes = y_pred.shape[-1]
        if _is_sparse(y_true, num_classes):
            labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
            targets = tf.one_hot(labels, num_classes)
        else:
            targets = tf.cast(y_true, tf.float32)
        probs = tf.nn.softmax(y_pred) if self.from_logits else y_pred
        weight = 1.0 + tf.reduce_max(probs, axis=-1)
        if not self.weight_gradient:
            weight = tf.stop_gradient(weight)
        return _cross_entropy(targets, y_pred, self.from_logits) * weight

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "weight_gradient": self.weight_gradient}


# Defined with the quantization schemes they serve; importing them lazily keeps
# `mntk.losses` free of tfmot until they are used.
_LAZY = {"CostTarget": "mntk.quantization.losses", "Distillation": "mntk.quantization.losses"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mntk.losses' has no attribute {name!r}")
