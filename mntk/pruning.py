"""Magnitude pruning: thin glue over ``tfmot.sparsity.keras``.

What it adds to tfmot: defaults that really prune on short runs (tfmot's
``frequency=100`` gives zero sparsity when a run has fewer steps), end steps
computed from epochs, a stepwise schedule with presets, the one callback tfmot
needs (``callbacks()``), and ``sparsity(model)`` per layer. Pruning itself is
tfmot's ``prune_low_magnitude`` (Zhu & Gupta, 2017, arXiv 1710.01878).

    pruned = mntk.pruning.prune(model, target=0.6, steps_per_epoch=100, epochs=5)
    pruned.compile(...); pruned.fit(..., callbacks=mntk.pruning.callbacks())
    model = mntk.pruning.strip(pruned)
"""
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from mntk import wrapped
from mntk.compat import ensure_tf_keras, keras

_sparsity = tfmot.sparsity.keras

#: Stepwise presets: (fraction of [begin_step, end_step], fraction of target).
#: "kaist": three equal stages up to the target (the KAIST entry pruned
#: gradually to 60% while fine-tuning); "osi": two stages. The stage
#: boundaries are mntk's choice; the entries do not publish exact steps.
PRESETS = {
    "kaist": ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)),
    "osi": ((0.0, 0.5), (0.5, 1.0)),
}


@keras.utils.register_keras_serializable(package="mntk")
class StepwiseSparsity(_sparsity.PruningSchedule):
    """Piecewise-constant sparsity: ``stages = [(step, sparsity), ...]``.

    From ``step_i`` on, the target sparsity is ``sparsity_i``; the mask is
    updated every ``frequency`` steps while ``begin_step <= step <= end_step``.
    """

    def __init__(self, stages, frequency=1, end_step=-1):
        stages = sorted((int(s), float(v)) for s, v in stages)
        if not stages or any(not 0.0 <= v < 1.0 for _, v in stages):
            raise ValueError(f"StepwiseSparsity: stages={stages!r}; need a non-empty "
                             "list of (step, sparsity) with 0 <= sparsity < 1.")
        self.stages = stages
        self.frequency = int(frequency)
        self.begin_step = stages[0][0]
        self.end_step = int(end_step)

    def __call__(self, step):
        sparsity = tf.constant(self.stages[0][1], tf.float32)
        for start, value in self.stages[1:]:
            sparsity = tf.where(step >= start, tf.constant(value, tf.float32), sparsity)
        return (self._should_prune_in_step(step, self.begin_step, self.end_step,
                                           self.frequency), sparsity)

    def get_config(self):
        return {"class_name": type(self).__name__,
                "config": {"stages": self.stages, "frequency": self.frequency,
                           "end_step": self.end_step}}

    @classmethod
    def from_config(cls, config):
        # tfmot's schedules give {"class_name", "config"} (what PruneLowMagnitude
        # stores); keras.utils.serialize_keras_object nests that in a "config".
        if set(config) == {"class_name", "config"}:
            config = config["config"]
        return cls(**config)


def fitted_frequency(steps_per_epoch=None, total_steps=None):
    """Mask-update period that prunes several times even on short runs."""
    if total_steps:
        return max(1, min(100, int(total_steps) // 20))
    if steps_per_epoch:
        return max(1, min(100, int(steps_per_epoch) // 4))
    return 1


def make_schedule(target=0.6, schedule="constant", begin_step=0, end_step=None,
                  frequency=None, steps_per_epoch=None, epochs=None):
    """Build a tfmot ``PruningSchedule`` from mntk's arguments (see ``prune``)."""
    if isinstance(schedule, _sparsity.PruningSchedule):
        return schedule
    if not 0.0 <= float(target) < 1.0:
        raise ValueError(f"prune: target={target!r} must be in [0, 1).")
    if end_step is None and steps_per_epoch and epochs:
        end_step = begin_step + int(steps_per_epoch) * int(epochs)
    total = (end_step - begin_step) if end_step else None
    if frequency is None:
        frequency = fitted_frequency(steps_per_epoch, total)
    if schedule == "constant":
        return _sparsity.ConstantSparsity(target, begin_step, end_step or -1, frequency)
    if end_step is None:
        raise ValueError(f"prune: schedule={schedule!r} needs end_step, or "
                         "steps_per_epoch and epochs to compute it.")
    if schedule == "polynomial":
        return _sparsity.PolynomialDecay(0.0, target, begin_step, end_step,
                                         frequency=frequency)
    if schedule in PRESETS:
        span = end_step - begin_step
        stages = [(begin_step + int(round(f * span)), target * t)
                  for f, t in PRESETS[schedule]]
        return StepwiseSparsity(stages, frequency, end_step)
    raise ValueError(f"prune: schedule={schedule!r}; use 'constant', 'polynomial', "
                     f"a preset {sorted(PRESETS)} or a tfmot PruningSchedule.")


def _prunable(layer):
    """Whether tfmot's registry prunes a weight of ``layer`` (a Dense or Conv
    kernel; not BN, not DepthwiseConv2D in tfmot 0.8, not preprocessing)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prunable_layer, prune_registry)
    if isinstance(layer, prunable_layer.PrunableLayer):
        return True
    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return False
    return bool(registry._weight_names(layer))


def prune(model, target=0.6, schedule="constant", begin_step=0, end_step=None,
          frequency=None, steps_per_epoch=None, epochs=None, layers=None):
    """A copy of ``model`` wrapped for magnitude pruning (tfmot ``prune_low_magnitude``).

    Args:
      model: a Functional or Sequential tf_keras model. It is not modified: the
        result is built from a prepared copy (``mntk.prepare``: TF-op arithmetic
        as Keras layers, nested models flattened) with the same weights.
      target: final fraction of zeros per pruned kernel.
      schedule: "constant", "polynomial" (0 -> target between begin and end
        step), a preset name ("kaist", "osi"), or a tfmot ``PruningSchedule``.
      begin_step, end_step: optimizer steps; end_step defaults to
        begin_step + steps_per_epoch * epochs when both are given.
      frequency: steps between mask updates; None fits it to the run length
        (tfmot's default of 100 never prunes a run shorter than 100 steps).
      layers: names of layers to prune (default: every layer with a kernel
        tfmot's registry prunes). Layers tfmot cannot prune (preprocessing,
        custom layers without ``PrunableLayer``) stay dense; naming one here
        is an error.

    Train with ``callbacks=mntk.pruning.callbacks()`` (tfmot's
    ``UpdatePruningStep``; without it tfmot stops with an error naming it).
    """
    from mntk import prepare as _prepare
    ensure_tf_keras(model, "model")
    sched = make_schedule(target, schedule, begin_step, end_step, frequency,
                          steps_per_epoch, epochs)
    wanted = None
    if layers is not None:
        wanted = set([layers] if isinstance(layers, str) else layers)
        unknown = wanted - {l.name for l in model.layers}
        if unknown:
            raise ValueError(f"prune: layers {sorted(unknown)} are not in {model.name!r}; "
                             f"layers: {[l.name for l in model.layers]}.")
        refused = sorted(l.name for l in model.layers
                         if l.name in wanted and not _prunable(l))
        if refused:
            raise ValueError(
                f"prune: tfmot cannot prune layers {refused} (no prunable kernel in "
                "its registry); leave them out of `layers`, or make the layer a "
                "tfmot.sparsity.keras.PrunableLayer.")
    preprocessing = set()
    if getattr(model, "_is_graph_network", False):
        preprocessing = set(_prepare.preprocessing_layers(model))

    def wrap(layer, original):
        chosen = (original.name in wanted) if wanted is not None else (
            original.name not in preprocessing and _prunable(original))
        if chosen:
            return _sparsity.prune_low_magnitude(layer, pruning_schedule=sched)
        return layer

    return _prepare.rebuild(model, wrap, what="prune")[0]


def callbacks(log_dir=None):
    """The callbacks a pruning run needs: ``UpdatePruningStep`` (+ summaries)."""
    out = [_sparsity.UpdatePruningStep()]
    if log_dir:
        out.append(_sparsity.PruningSummaries(log_dir=log_dir))
    return out


def strip(model):
    """Remove the pruning wrappers, keeping the (sparse) weights."""
    ensure_tf_keras(model, "model")
    return _sparsity.strip_pruning(model)


def sparsity(model):
    """{layer name: fraction of exact zeros in its kernel}.

    Works on plain, pruning-wrapped (weights x mask) and QAT models (the
    effective fake-quantized kernel).
    """
    out = {}
    for layer in model.layers:
        kernel = wrapped.effective_kernel(layer)
        if kernel is not None:
            out[wrapped.unwrap(layer).name] = float(np.mean(kernel == 0.0))
    return out
