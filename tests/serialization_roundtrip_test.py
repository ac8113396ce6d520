"""Every registered mntk object survives serialize -> JSON -> deserialize.

The list of objects is read from the Keras registry (``mntk>`` names, after
importing every mntk module), so a newly registered object is covered the day
it is added, and fails here until it has a factory in ``CASES``. Layers,
losses, regularizers, constraints, quantizers and pruning schedules must also
give the same outputs on fixed inputs; callbacks and configs the same config.
"""
import dataclasses
import importlib
import json
import pkgutil
from typing import Any, Callable, Optional

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import mntk
from mntk.compat import keras


def _registered():
    for info in pkgutil.walk_packages(mntk.__path__, "mntk."):
        importlib.import_module(info.name)
    return sorted(name for name, obj in keras.saving.get_custom_objects().items()
                  if name.startswith("mntk>")
                  and getattr(obj, "__module__", "").startswith("mntk."))


REGISTERED = _registered()


@dataclasses.dataclass
class Case:
    """make(): a fresh object; inputs: what to call it on (None: config only);
    prepare(restored, original): what a deserialized object needs before use."""
    make: Callable[[], Any]
    inputs: Any = None
    prepare: Optional[Callable[[Any, Any], None]] = None


def _rng(seed=0):
    return np.random.default_rng(seed)


_IMAGES = _rng().normal(size=(4, 4, 4, 3)).astype("float32")
_KERNEL = _rng(1).normal(size=(3, 3, 4, 6)).astype("float32")
_LABELS = np.array([0, 2, 1, 2])
_LOGITS = _rng(2).normal(size=(4, 3)).astype("float32") * 2


def _classifier_model():
    inputs = keras.Input((5,))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))


_CLASSIFIER = None


def _adaptive_smoothing():
    global _CLASSIFIER
    _CLASSIFIER = _classifier_model()
    return mntk.losses.AdaptiveLabelSmoothing(_CLASSIFIER.get_layer("logits"), epsilon=0.2,
                                              refresh="step")


def _bind_classifier(restored, original):
    restored.bind(_CLASSIFIER)


def _quantize_config():
    return mntk.quantization.MntkQuantizeConfig(
        ["kernel"], ["activation"], False,
        weight_quantizer=mntk.quantization.TernaryWeightQuantizer(threshold=0.1))


CASES = {
    # layers
    "mntk>ChannelPad": Case(lambda: mntk.models.layers.ChannelPad(1, 2), _IMAGES),
    "mntk>GhostBatchNormalization": Case(
        lambda: mntk.models.layers.GhostBatchNormalization(num_splits=2), _IMAGES),
    "mntk>KeepBranch": Case(lambda: mntk.models.layers.KeepBranch(), [_IMAGES, _IMAGES * 2]),
    "mntk>MixedPooling2D": Case(lambda: mntk.early_exit.heads.MixedPooling2D(), _IMAGES),
    "mntk>NearestUpsample": Case(lambda: mntk.models.layers.NearestUpsample((7, 5)), _IMAGES),
    # losses
    "mntk>AdaptiveLabelSmoothing": Case(_adaptive_smoothing, (_LABELS, _LOGITS),
                                        _bind_classifier),
    "mntk>ConfidenceWeighted": Case(lambda: mntk.losses.ConfidenceWeighted(),
                                    (_LABELS, _LOGITS)),
    "mntk>Distillation": Case(
        lambda: mntk.losses.Distillation(temperature=3.0, alpha=0.4),
        (np.concatenate([_LABELS[:, None], _LOGITS[::-1]], 1).astype("float32"), _LOGITS)),
    "mntk>CrossEntropyWithLogitDistance": Case(
        lambda: mntk.quantization.CrossEntropyWithLogitDistance(alpha=7.0, distance=0.01,
                                                                label_smoothing=0.1),
        (np.concatenate([_LABELS[:, None], _LOGITS[::-1]], 1).astype("float32"), _LOGITS)),
    "mntk>ExitWeightedLoss": Case(
        lambda: mntk.early_exit.ExitWeightedLoss(
            keras.losses.SparseCategoricalCrossentropy(from_logits=True), weight=0.3),
        (_LABELS, _LOGITS)),
    # regularizers and constraints
    "mntk>SRIP": Case(lambda: mntk.regularizers.SRIP(0.1, power_iterations=3), _KERNEL),
    "mntk>SO": Case(lambda: mntk.regularizers.SO(0.1), _KERNEL),
    "mntk>DSO": Case(lambda: mntk.regularizers.DSO(0.1), _KERNEL),
    "mntk>MC": Case(lambda: mntk.regularizers.MC(0.1, layout="depthwise"), _KERNEL),
    "mntk>NormalizedMC": Case(lambda: mntk.regularizers.NormalizedMC(0.1), _KERNEL),
    "mntk>GammaRange": Case(lambda: mntk.quantization.GammaRange(3, 6),
                            np.linspace(-1, 2, 7).astype("float32")),
    "mntk>ClipRange": Case(lambda: mntk.quantization.ClipRange(-0.6, 1.2),
                           np.linspace(-1, 2, 7).astype("float32")),
    # quantizers
    "mntk>TernaryWeightQuantizer": Case(
        lambda: mntk.quantization.TernaryWeightQuantizer(threshold=0.2, init="ones"), _KERNEL),
    "mntk>BinaryWeightQuantizer": Case(
        lambda: mntk.quantization.BinaryWeightQuantizer(clip=0.5), _KERNEL),
    "mntk>LearnedPrecisionWeightQuantizer": Case(
        lambda: mntk.quantization.LearnedPrecisionWeightQuantizer(init_bits=3, min_bits=2),
        _KERNEL),
    "mntk>LearnedPrecisionActivationQuantizer": Case(
        lambda: mntk.quantization.LearnedPrecisionActivationQuantizer(init_bits=4), _IMAGES),
    # pruning schedule: (prune now?, sparsity) at these steps
    "mntk>StepwiseSparsity": Case(
        lambda: mntk.pruning.StepwiseSparsity([(0, 0.2), (10, 0.5)], frequency=2, end_step=30),
        [0, 3, 10, 12, 40]),
    # learning-rate schedule: the rate at a few steps, across a cycle boundary
    "mntk>CosineCycles": Case(
        lambda: mntk.schedules.CosineCycles(0.1, 4, min_learning_rate=0.01),
        (tf.constant([0, 1, 3, 4, 6]),)),
    # functions: deserialized by name
    "mntk>hard_sigmoid": Case(lambda: mntk.prepare.hard_sigmoid, (_IMAGES,)),
    "mntk>hard_swish": Case(lambda: mntk.models.blocks.hard_swish, (_IMAGES,)),
    "mntk>first_column_accuracy": Case(
        lambda: keras.saving.get_registered_object("mntk>first_column_accuracy"),
        (np.concatenate([_LABELS[:, None], _LOGITS], 1), _LOGITS)),
    # config only
    "mntk>AdaptiveSmoothingRefresh": Case(
        lambda: mntk.losses.AdaptiveSmoothingRefresh([_adaptive_smoothing()])),
    "mntk>CoefficientSchedule": Case(
        lambda: mntk.callbacks.CoefficientSchedule({0: 0.1, 20: 1e-3}, base=0.5)),
    "mntk>BitWidthAdam": Case(lambda: mntk.quantization.BitWidthAdam(
        3e-6, bits_learning_rate=1e-3, steps_per_epoch=50, bits_tenths="alternate")),
    "mntk>CostLogger": Case(lambda: mntk.cost.CostLogger(task="imagenet", every=2,
                                                         input_shape=(8, 8, 3))),
    "mntk>CostTarget": Case(lambda: mntk.losses.CostTarget(target=3.0, coefficient=0.2)),
    "mntk>ExitWeightRamp": Case(lambda: mntk.early_exit.ExitWeightRamp([0.3, 0.6, 1.0], 5)),
    "mntk>GlobalPruning": Case(lambda: mntk.global_pruning.GlobalPruning(
        stages=[(1, 0.3), (3, 0.6)], layers=["conv"])),
    "mntk>MntkQuantizeConfig": Case(_quantize_config),
    "mntk>StochasticWeightAveraging": Case(
        lambda: mntk.callbacks.StochasticWeightAveraging(start=0.3, period=0.1,
                                                         recompute_bn=False)),
}


def _json(config):
    return json.loads(json.dumps(config))


def _build_quantizer(quantizer, shape):
    holder = keras.layers.Layer()  # stands in for the QuantizeWrapper owning the variables
    return quantizer.build(shape, "kernel", holder)


def _outputs(obj, inputs):
    """What `obj` computes on `inputs`, as numpy, by the kind of object it is."""
    if isinstance(obj, keras.layers.Layer):
        return obj(*inputs) if isinstance(inputs, tuple) else obj(inputs)
    if isinstance(obj, keras.losses.Loss):
        return obj(*inputs)
    if isinstance(obj, (keras.regularizers.Regularizer, keras.constraints.Constraint)):
        return obj(tf.constant(inputs))
    if isinstance(obj, tfmot.quantization.keras.quantizers.Quantizer):
        variables = _build_quantizer(obj, inputs.shape)
        return obj(tf.constant(inputs), False, variables)
    if isinstance(obj, tfmot.sparsity.keras.PruningSchedule):
        return [[float(v) for v in obj(tf.constant(step, tf.int64))] for step in inputs]
    if callable(obj):
        return obj(*inputs)
    raise TypeError(f"no rule to call {obj!r}")


def test_every_registered_object_has_a_case():
    missing = sorted(set(REGISTERED) - set(CASES))
    assert not missing, f"add a Case to CASES for {missing}"
    stale = sorted(set(CASES) - set(REGISTERED))
    assert not stale, f"CASES names objects that are no longer registered: {stale}"


@pytest.mark.parametrize("name", REGISTERED)
def test_round_trip_keeps_config_and_outputs(name):
    if name not in CASES:
        pytest.fail(f"{name} is registered but has no Case in CASES: add a factory")
    case = CASES[name]
    original = case.make()
    serialized = keras.utils.serialize_keras_object(original)
    restored = keras.utils.deserialize_keras_object(_json(serialized))
    assert type(restored) is type(original)
    assert _json(keras.utils.serialize_keras_object(restored)) == _json(serialized)
    if case.inputs is None:
        return
    if case.prepare:
        case.prepare(restored, original)
    expected = _outputs(original, case.inputs)
    if isinstance(original, keras.layers.Layer) and original.weights:
        _outputs(restored, case.inputs)  # builds it
        restored.set_weights(original.get_weights())
    got = _outputs(restored, case.inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, err_msg=name)
