"""SRIP, the spectral restricted isometry regularizer, and `apply_srip` with its options.

From Bansal, Chen, Wang, "Can We Gain More from Orthogonality Regularizations
in Training Deep CNNs?" (NeurIPS 2018, arXiv 1810.09102). With W a kernel
reshaped to one column per filter (see `mntk.orthogonality`):

- SRIP: coefficient * sigma(G - I), G the smaller Gram matrix (W^T W or
  W W^T), sigma the spectral norm by power iteration (sigma^2 with
  `squared=True`, as the WRN and KAIST code did).

`SRIP` is a layer regularizer (`kernel_regularizer=` / `depthwise_regularizer=`)
whose power-iteration vectors persist per kernel variable; `apply_srip`
attaches it to a built model's kernels in place, with the entries' variants:
layer presets (`PRESETS`), sum or mean over layers, which Gram matrix
(`GRAMS`) and a persistent or fresh start vector (`VECTORS`).
"""
import threading

import tensorflow as tf
from tensorflow.python.eager import record as _record  # no public "is a tape recording?"

from mntk.compat import ensure_tf_keras, keras
from mntk.orthogonality import (gram_residual, kernel_matrix, layer_kernels,
                                spectral_norm_estimate, unwrap_layer)
from mntk.regularizers.orthogonal import _ATTACHED, OrthogonalityRegularizer, _iter_layers

PRESETS = ("pointwise", "conv", "all")


@keras.utils.register_keras_serializable(package="mntk")
class SRIP(OrthogonalityRegularizer):
    """Spectral restricted isometry property regularizer (Bansal et al. 2018).

    penalty(W) = sigma(G - I) (or sigma^2 with `squared=True`), G the smaller of
    W^T W and W W^T, sigma estimated by `power_iterations` products per call
    (2 in the paper). For each kernel *variable* the power-iteration vector
    persists between calls in a non-trainable variable (as in spectral
    normalization), so the estimate tracks sigma closely across steps; it is
    created on first use (or by `apply_srip` up front) and is not part of the
    model's weights, so saved models carry only this config. A plain tensor
    starts from a fixed pseudo-random vector each call.

    Args:
      coefficient: initial multiplier (a tf.Variable; schedule it with
        `mntk.callbacks.CoefficientSchedule`).
      power_iterations: matrix-vector products per call (>= 1).
      squared: penalize sigma^2 (WRN / KAIST code) instead of sigma (paper).
      layout: "auto" (depthwise for a variable named `depthwise_kernel`,
        else conv/dense), "matrix" or "depthwise".
    """

    def __init__(self, coefficient=1e-2, power_iterations=2, squared=False, layout="auto"):
        super().__init__(coefficient, layout)
        if int(power_iterations) < 1:
            raise ValueError(f"SRIP: power_iterations must be >= 1, got {power_iterations!r}.")
        self.power_iterations = int(power_iterations)
        self.squared = bool(squared)
        self._vectors = {}  # id(kernel variable) -> (kernel, vector variable)
        self._lock = threading.Lock()  # MirroredStrategy traces replicas in threads

    def vector_for(self, kernel, layout=None):
        """The persistent power-iteration vector of a kernel variable (created once)."""
        with self._lock:
            entry = self._vectors.get(id(kernel))
            if entry is None:
                size = gram_residual(self._matrix(kernel, layout)).shape[-1]
                with tf.init_scope():
                    # ON_READ + MEAN, like BatchNorm's moving statistics: each
                    # replica updates its own copy in replica context; all copies
                    # see the same mirrored kernel, so they stay equal.
                    # Stateless: deterministic, and leaves the global RNG stream
                    # (hence the user's initializers) untouched.
                    start = tf.math.l2_normalize(
                        tf.random.stateless_normal([size], seed=[size, len(self._vectors)]))
                    vector = tf.Variable(
                        start, trainable=False, name="srip_vector",
                        synchronization=tf.VariableSynchronization.ON_READ,
                        aggregation=tf.VariableAggregation.MEAN)
                entry = (kernel, vector)
                self._vectors[id(kernel)] = entry
            return entry[1]

    @property
    def variables(self):
        """Coefficient, power-iteration vectors and (``apply_srip(vector="fresh")``)
        the step counter seeding the fresh vectors: the state a checkpoint of a
        run must hold to resume exactly (``mntk.train`` backs them up)."""
        step = getattr(self, "fresh_step", None)
        return ([self.coefficient] + [vector for _, vector in self._vectors.values()]
                + ([step] if step is not None else []))

    def penalty(self, kernel, layout=None):
        residual = gram_residual(self._matrix(kernel, layout))
        if not isinstance(kernel, tf.Variable):
            estimate, _ = spectral_norm_estimate(
                residual, self.power_iterations, squared=self.squared)
            return estimate
        vector = self.vector_for(kernel, layout)
        estimate, next_vector = spectral_norm_estimate(
            residual, self.power_iterations, vector=vector, squared=self.squared)
        if not _in_training_step():
            # `model.losses` read outside a training step (evaluation, a
            # checkpoint callback, a user): the estimate, but the vector stays,
            # so a resumed run's backed-up vector is the one training left
            return estimate
        with tf.control_dependencies([vector.assign(next_vector)]):
            return tf.identity(estimate)

    def get_config(self):
        return {**super().get_config(), "power_iterations": self.power_iterations,
                "squared": self.squared}


def _in_training_step() -> bool:
    """True inside a training step: a ``GradientTape`` is recording (Keras'
    ``train_step`` reads the losses under one; ``test_step``, callbacks and
    user code reading ``model.losses`` do not)."""
    return _record.could_possibly_record()


def _select(model, layers):
    """[(layer name, kernel, layout)] chosen by a preset or a predicate."""
    if callable(layers):
        wanted = lambda layer, kind: bool(layers(unwrap_layer(layer)))  # noqa: E731
    elif layers in PRESETS:
        kinds = {"pointwise": {"pointwise"}, "conv": {"pointwise", "conv"},
                 "all": {"pointwise", "conv", "dense"}}[layers]
        wanted = lambda layer, kind: kind in kinds  # noqa: E731
    else:
        raise ValueError(
            f"apply_srip: layers={layers!r} is not one of {PRESETS} or a "
            "predicate `layer -> bool`.")
    chosen, seen = [], set()
    for layer in _iter_layers(model):
        for kernel, layout, kind in layer_kernels(layer):
            if id(kernel) not in seen and wanted(layer, kind):
                seen.add(id(kernel))
                chosen.append((layer.name, kernel, layout))
    return chosen


GRAMS = ("smaller", "fan_in", "fan_out")
VECTORS = ("persistent", "fresh")


def _entry_gram(w, gram):
    """G - I on the chosen side of W (rows = fan-in k*k*cin, columns = filters)."""
    if gram == "smaller":
        return gram_residual(w)
    return gram_residual(w, smaller=False, transpose=gram == "fan_in")


def apply_srip(model, coefficient=1e-2, layers="pointwise", power_iterations=2,
               squared=False, reduction="sum", name="srip", gram="smaller",
               vector="persistent"):
    """Attach SRIP to the kernels of a built model, in place, without rebuilding it.

    Modifies ``model``: it gains a loss and a metric (its weights, trainable
    flags and config are unchanged). This is the point of the call: the
    model you then ``fit`` is the one regularized.

    Adds `coefficient * sum_l sigma_l` (or the mean over layers with
    reduction="mean", KAIST's choice with squared=True) as a model loss through
    `model.add_loss`, and a metric `name` (the unscaled sum or mean of
    sigma_l) that Keras shows in fit/evaluate logs, History and TensorBoard.
    Kernels inside tfmot pruning and QAT wrappers are regularized as their
    latent float variables. The attachment is a training-time addition: a
    saved and reloaded model does not carry it (call apply_srip again, or build
    with `kernel_regularizer=SRIP(...)` to keep it in the config).

    Args:
      model: a built tf_keras model (build it in the strategy scope first).
      coefficient: initial SRIP coefficient.
      layers: "pointwise" (1x1 convs incl. squeeze-excite; the KAIST choice),
        "conv" (all convolutions, depthwise too), "all" (convs and Dense), or
        a predicate called with each (unwrapped) layer.
      power_iterations, squared: see `SRIP`.
      reduction: "sum" (paper) or "mean" over the selected kernels.
      name: the metric's name in the logs.
      gram: which Gram matrix's residual G - I gets the spectral norm, with W
        of shape (k*k*cin, cout): "smaller" (the smaller of W^T W and W W^T,
        the paper's advice), "fan_in" (W W^T, (k*k*cin)^2: KAIST's W^T W of
        the torch (out, in) view, Regularization/orthogonal_weight.py:101-129,
        whatever the shape) or "fan_out" (W^T W, cout^2).
      vector: "persistent" (the power-iteration vector carries over between
        steps) or "fresh" (a new N(0, 1) start every step, as KAIST did; with
        power_iterations=2 that is their one power step: sigma =
        ||M normalize(M u0)||). Fresh starts are drawn statelessly from
        (training step, kernel index); the step counter advances in training
        steps only and is part of the regularizer's `variables`, so a resumed
        run draws the same starts as an uninterrupted one.

    KAIST's form: ``apply_srip(model, 0.7, "pointwise", power_iterations=2,
    squared=True, reduction="mean", gram="fan_in", vector="fresh")``.

    Returns:
      The `SRIP` regularizer; hand it (or its `.coefficient`) to
      `mntk.callbacks.CoefficientSchedule`. Its `layer_names` lists what it covers.
    """
    ensure_tf_keras(model)
    if not model.built:
        raise ValueError(
            f"apply_srip: model {model.name!r} is not built; call it on data or "
            "build it with an input shape first.")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"apply_srip: reduction={reduction!r} must be 'sum' or 'mean'.")
    if gram not in GRAMS:
        raise ValueError(f"apply_srip: gram={gram!r} must be one of {GRAMS}.")
    if vector not in VECTORS:
        raise ValueError(f"apply_srip: vector={vector!r} must be one of {VECTORS}.")
    targets = _select(model, layers)
    if not targets:
        present = sorted({f"{type(unwrap_layer(l)).__name__}" for l in _iter_layers(model)})
        raise ValueError(
            f"apply_srip: no layer of model {model.name!r} matches layers={layers!r} "
            f"(layer types present: {present}); pick another preset ('pointwise', "
            "'conv', 'all') or pass a predicate.")
    if any(m.name == name for m in model._metrics):
        raise ValueError(
            f"apply_srip: model {model.name!r} already has a metric named {name!r} "
            "(SRIP attached twice?); pass another `name`.")
    with model.distribute_strategy.scope():
        regularizer = SRIP(coefficient, power_iterations, squared)
        for _, kernel, layout in targets:
            if gram != "smaller" and vector == "persistent":
                _seed_vector(regularizer, kernel, layout, gram)
            if vector == "persistent":
                regularizer.vector_for(kernel, layout)
        metric = keras.metrics.Mean(name=name)
        if vector == "fresh":
            # training steps taken: the fresh vectors are drawn from it, so a
            # resumed run (the counter is backed up with the other state)
            # draws what an uninterrupted one would. ON_READ like the vectors:
            # every replica counts the same steps.
            with tf.init_scope():
                regularizer.fresh_step = tf.Variable(
                    0, dtype=tf.int64, trainable=False, name="srip_fresh_step",
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    regularizer.layer_names = [layer_name for layer_name, _, _ in targets]
    regularizer.gram, regularizer.vector_mode = gram, vector

    def penalty(kernel, layout, index):
        if gram == "smaller" and vector == "persistent":
            return regularizer.penalty(kernel, layout)
        residual = _entry_gram(kernel_matrix(kernel, layout), gram)
        if vector == "fresh":
            # N(0, 1) from the seed (training step, kernel index): stateless, so
            # the draw does not depend on the process's RNG history
            seed = tf.stack([regularizer.fresh_step.read_value(),
                             tf.constant(index, tf.int64)])
            start = tf.random.stateless_normal([residual.shape[-1]], seed=seed)
            return spectral_norm_estimate(residual, power_iterations, vector=start,
                                          squared=squared)[0]
        state = regularizer.vector_for(kernel, layout)
        estimate, next_vector = spectral_norm_estimate(
            residual, power_iterations, vector=state, squared=squared)
        if not _in_training_step():  # as SRIP.penalty: the vector moves in training only
            return estimate
        with tf.control_dependencies([state.assign(next_vector)]):
            return tf.identity(estimate)

    def srip_loss():
        values = [penalty(kernel, layout, i) for i, (_, kernel, layout) in enumerate(targets)]
        total = tf.add_n(values)
        if reduction == "mean":
            total = total / float(len(values))
        if vector == "fresh" and _in_training_step():  # next step, next vectors
            with tf.control_dependencies([total]):
                advance = regularizer.fresh_step.assign_add(1)
            with tf.control_dependencies([advance]):
                total = tf.identity(total)
        metric.update_state(total)
        return regularizer.coefficient * total

    model.add_loss(srip_loss)
    # Model.metrics gathers every layer's `_metrics`; appending here (rather
    # than setting an attribute) keeps the metric out of `model.layers`.
    with model._metrics_lock:
        model._metrics.append(metric)
    _ATTACHED.setdefault(model, []).append(regularizer)
    return regularizer


def _seed_vector(regularizer, kernel, layout, gram):
    """Create the persistent vector of `kernel` sized for the `gram` side (the
    SRIP class sizes it for the smaller side); it joins `regularizer.variables`."""
    size = _entry_gram(kernel_matrix(kernel, layout), gram).shape[-1]
    with regularizer._lock, tf.init_scope():
        start = tf.math.l2_normalize(
            tf.random.stateless_normal([size], seed=[size, len(regularizer._vectors)]))
        state = tf.Variable(start, trainable=False, name="srip_vector",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.MEAN)
        regularizer._vectors[id(kernel)] = (kernel, state)
