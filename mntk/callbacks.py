"""Keras callbacks of the MicroNet tricks.

`CoefficientSchedule` sets a regularization coefficient (a `tf.Variable`,
e.g. `SRIP.coefficient`) at each epoch start, so the compiled train function
is never retraced. `AdaptiveSmoothingRefresh` (made by
`AdaptiveLabelSmoothing.callback()`) is re-exported here.
"""
import bisect

import tensorflow as tf

from mntk.compat import keras
from mntk.losses import AdaptiveSmoothingRefresh

__all__ = ["CoefficientSchedule", "AdaptiveSmoothingRefresh", "SCHEDULE_PRESETS",
           "StochasticWeightAveraging", "recompute_batch_norm"]

# SRIP (Bansal et al. 2018, arXiv 1810.09102), 200 epochs. The reference code
# multiplies a base coefficient lambda0 (1e-2) by 1 before epoch 20, then
# 1e-3, 1e-4, 1e-6, 0 from epochs 20, 50, 70, 120: "srip_paper" is those
# factors (relative to the base). The paper's text states absolute values
# 0.1 -> 1e-3 (20) -> 1e-4 (50) -> 1e-6 (70) -> 0 (120): "srip_paper_absolute".
SCHEDULE_PRESETS = {
    "srip_paper": {0: 1.0, 20: 1e-3, 50: 1e-4, 70: 1e-6, 120: 0.0},
    "srip_paper_absolute": {0: 0.1, 20: 1e-3, 50: 1e-4, 70: 1e-6, 120: 0.0},
}
# Presets whose values are the coefficient itself, not factors of the base.
ABSOLUTE_PRESETS = frozenset({"srip_paper_absolute"})


def _coefficient_variable(target):
    variable = getattr(target, "coefficient", target)
    if not isinstance(variable, tf.Variable):
        raise TypeError(
            f"CoefficientSchedule: target {target!r} is neither a tf.Variable nor an "
            "object with a `.coefficient` tf.Variable (e.g. mntk.regularizers.SRIP).")
    return variable


@keras.utils.register_keras_serializable(package="mntk")
class CoefficientSchedule(keras.callbacks.Callback):
    """Sets a coefficient variable at the start of every epoch.

    value(epoch) = s(epoch), or base * s(epoch) when `relative`, where s is

    - a preset name: "srip_paper", the SRIP reference code's factors 1 @0,
      1e-3 @20, 1e-4 @50, 1e-6 @70, 0 @120 of the base (relative); or
      "srip_paper_absolute", the paper's stated values 0.1 @0, 1e-3 @20,
      1e-4 @50, 1e-6 @70, 0 @120 (absolute);
    - a dict {first_epoch: value}: piecewise constant, each value holding from
      its epoch (0-based) until the next key; before the first key the
      coefficient keeps its base value;
    - a callable `epoch -> value`.

    Args:
      schedule: preset name, dict or callable (see above).
      target: a tf.Variable, an object with a `.coefficient` variable (SRIP,
        SO, DSO, MC), or a list of those. None: every orthogonality
        regularizer of the trained model (`mntk.regularizers.orthogonality_regularizers`).
      base: the value relative schedules multiply; default each target's value
        when training first starts.
      relative: multiply by base (default: True for relative presets, False
        for absolute presets and dicts).
      log_as: if set, the value is written to the epoch logs under this name
        (History, CSVLogger, TensorBoard).
    """

    def __init__(self, schedule="srip_paper", target=None, base=None, relative=None,
                 log_as=None):
        super().__init__()
        if isinstance(schedule, str):
            if schedule not in SCHEDULE_PRESETS:
                raise ValueError(
                    f"CoefficientSchedule: unknown preset {schedule!r}; presets: "
                    f"{sorted(SCHEDULE_PRESETS)}, or pass a dict {{epoch: value}} or a callable.")
            if relative is None:
                relative = schedule not in ABSOLUTE_PRESETS
        elif isinstance(schedule, dict):
            if not schedule or any(int(k) < 0 for k in schedule):
                raise ValueError(
                    f"CoefficientSchedule: a dict schedule needs epochs >= 0 as keys, got {schedule!r}.")
            schedule = {int(k): float(v) for k, v in schedule.items()}
        elif not callable(schedule):
            raise TypeError(
                f"CoefficientSchedule: schedule must be a preset name, a dict or a callable, "
                f"got {type(schedule).__name__}.")
        self.schedule = schedule
        self.relative = bool(relative)
        self.base = None if base is None else float(base)
        self.log_as = log_as
        self._targets = None if target is None else [
            _coefficient_variable(t) for t in (target if isinstance(target, (list, tuple)) else [target])]
        self._bases = None
        self.last_values = None

    def factor(self, epoch):
        """s(epoch); None before a dict's first key (keep the base value)."""
        schedule = self.schedule
        if isinstance(schedule, str):
            schedule = SCHEDULE_PRESETS[schedule]
        if isinstance(schedule, dict):
            epochs = sorted(schedule)
            position = bisect.bisect_right(epochs, int(epoch)) - 1
            return None if position < 0 else schedule[epochs[position]]
        return float(schedule(int(epoch)))

    def value(self, epoch, base):
        factor = self.factor(epoch)
        if factor is None:
            return base
        return base * factor if self.relative else factor

    def on_train_begin(self, logs=None):
        if self._targets is None:
            from mntk.regularizers import orthogonality_regularizers
            found = orthogonality_regularizers(self.model)
            if not found:
                raise ValueError(
                    f"CoefficientSchedule: model {self.model.name!r} has no orthogonality "
                    "regularizer (SRIP/SO/DSO/MC); pass `target=` (a variable or regularizer).")
            self._targets = [r.coefficient for r in found]
        if self._bases is None:  # once, so a second fit() does not compound factors
            self._bases = [self.base if self.base is not None
                           else float(keras.backend.get_value(v)) for v in self._targets]

    def on_epoch_begin(self, epoch, logs=None):
        self.last_values = [self.value(epoch, base) for base in self._bases]
        for variable, value in zip(self._targets, self.last_values):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        if self.log_as and logs is not None and self.last_values:
            logs[self.log_as] = self.last_values[0]

    def get_config(self):
        """The schedule without its target (variables are not config): pass
        `target=` again to `from_config`, or leave it None to find the model's
        regularizers. A callable schedule cannot be serialized."""
        if callable(self.schedule) and not isinstance(self.schedule, (str, dict)):
            raise NotImplementedError(
                "CoefficientSchedule with a callable schedule has no config; use a "
                "preset or a dict {epoch: value} to serialize it.")
        schedule = self.schedule if isinstance(self.schedule, str) else {
            str(k): v for k, v in self.schedule.items()}
        return {"schedule": schedule, "base": self.base, "relative": self.relative,
                "log_as": self.log_as}

    @classmethod
    def from_config(cls, config, target=None):
        return cls(target=target, **config)


# --- Stochastic weight averaging ------------------------------------------------

def _batch_norm_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def recompute_batch_norm(model, data, steps=None):
    """Set every trainable BatchNormalization's moving mean and variance to the
    plain average, over the batches of ``data``, of the statistics the layer
    itself would write for each batch (its momentum set to 0 for the pass;
    Izmailov et al. 2018 recompute them after averaging, since the averaged
    weights' activations have other statistics). ``data``: a dataset of ``x`` or
    ``(x, y[, w])``, or an array of inputs (batched by 128). Returns the number
    of batches used."""
    layers = _batch_norm_layers(model)
    if not layers:
        return 0
    if not isinstance(data, tf.data.Dataset):
        data = tf.data.Dataset.from_tensor_slices(data).batch(128)
    if steps is not None:
        data = data.take(int(steps))
    saved = [layer.momentum for layer in layers]
    sums = [[tf.zeros_like(layer.moving_mean), tf.zeros_like(layer.moving_variance)]
            for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each batch overwrites: moving = this batch's statistic
        forward = tf.function(lambda x: model(x, training=True))  # traced with momentum 0
        for element in data:
            x = element[0] if isinstance(element, (tuple, list)) else element
            forward(x)
            for acc, layer in zip(sums, layers):
                acc[0] += layer.moving_mean
                acc[1] += layer.moving_variance
            count += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    if count == 0:
        raise ValueError(f"recompute_batch_norm: the data for model {model.name!r} "
                         "gave no batch.")
    for acc, layer in zip(sums, layers):
        layer.moving_mean.assign(acc[0] / count)
        layer.moving_variance.assign(acc[1] / count)
    return count


@keras.utils.register_keras_serializable(package="mntk")
class StochasticWeightAveraging(keras.callbacks.Callback):
    """Stochastic weight averaging (Izmailov et al., UAI 2018, arXiv 1803.05407).

    After n completed training steps, counted from epoch 0 of the run as
    ``n = epoch * steps_per_epoch + batch + 1``, the weights are averaged at
    every n with ``n >= S`` and ``(n - S) % P == 0``, where ``S = round(start *
    steps_per_epoch)`` and ``P = round(period * steps_per_epoch)``:

        w_swa <- w_swa + (w - w_swa) / (k + 1)     (k averages so far)

    so w_swa is the plain mean of the weights at those points. At the end of
    training the average replaces the weights and the BatchNorm statistics are
    recomputed with one pass over ``bn_data`` (``recompute_batch_norm``).
    ``start`` and ``period`` are in epochs and may be fractions. Texas-EIC's
    one-epoch fine-tune (``--swa_delay 0.2 --swa_freq 0.1``) averaged the
    trainable variables after tenths 3..10 of the epoch (its check
    ``delay <= epoch + k/10`` runs after tenth k+1, and skips k = 0;
    adj_quant/scripts/trainer/trainer.py:261-286), with no BatchNorm pass:
    ``start=0.3, period=0.1, recompute_bn=False``.

    Args:
      start: epochs of training before the first averaged point.
      period: epochs between averaged points.
      steps_per_epoch: default: the ``steps`` ``model.fit`` reports.
      weights: "trainable" (default; BN statistics are recomputed instead) or
        "all" (every model weight, BN statistics included).
      bn_data: data for the BatchNorm pass (see ``recompute_batch_norm``);
        required when the model has trainable BatchNorm layers, unless
        ``recompute_bn=False``.
      bn_steps: batches of ``bn_data`` to use (default: all).
      swap_at_end: put the average into the model when training ends
        (otherwise call ``swap()``).
      cycle: 0 (default): one average over the whole fit. k > 0: every k
        epochs the average is put into the model (``swap()``) and a new one
        starts from there, with n (and so ``start``) counted from the cycle's
        first step: Texas-EIC's three 1-epoch SWA fine-tunes in a row, each
        from the last one's average, are ``cycle=1`` over 3 epochs. The
        swap happens at the cycle's last ``on_epoch_end``, before the
        runner's backup of that epoch.

    State (``variables``: the running average and the count) is in
    ``tf.Variable``s, so a resumed run continues the same average.
    """

    def __init__(self, start=0.0, period=1.0, steps_per_epoch=None, weights="trainable",
                 bn_data=None, bn_steps=None, recompute_bn=True, swap_at_end=True,
                 model=None, cycle=0):
        super().__init__()
        if float(start) < 0 or float(period) <= 0:
            raise ValueError(f"StochasticWeightAveraging: start={start!r} must be >= 0 and "
                             f"period={period!r} > 0 (both in epochs).")
        if weights not in ("trainable", "all"):
            raise ValueError(f"StochasticWeightAveraging: weights={weights!r}; use "
                             "'trainable' or 'all'.")
        self.start, self.period = float(start), float(period)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.weights = weights
        self.bn_data, self.bn_steps = bn_data, bn_steps
        self.recompute_bn, self.swap_at_end = bool(recompute_bn), bool(swap_at_end)
        if int(cycle) < 0:
            raise ValueError(f"StochasticWeightAveraging: cycle={cycle!r} must be >= 0 "
                             "(epochs per average; 0: one average).")
        self.cycle = int(cycle)
        self._built_for = None
        if model is not None:
            self.set_model(model)

    def set_model(self, model):
        super().set_model(model)
        if self._built_for is model:
            return
        if self._built_for is not None:
            raise ValueError(f"StochasticWeightAveraging was built for model "
                             f"{self._built_for.name!r}; make a new one for {model.name!r}.")
        self._built_for = model
        self._targets = list(model.trainable_weights if self.weights == "trainable"
                             else model.weights)
        with model.distribute_strategy.scope():
            self.average = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                        name=f"swa_{i}") for i, v in enumerate(self._targets)]
            self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="swa_count")
        self._update_fn = tf.function(self._update)

    @property
    def variables(self):
        return list(self.average) + [self.count]

    @property
    def state_variables(self):
        """What a resumed run must restore (pass it to ``mntk.train``'s ``fit(state=)``)."""
        return self.variables if self._built_for is not None else []

    def _update(self):
        k = tf.cast(self.count, tf.float32)
        for average, variable in zip(self.average, self._targets):
            average.assign_add((tf.cast(variable, average.dtype) - average)
                               / tf.cast(k + 1.0, average.dtype))
        self.count.assign_add(1)

    def _schedule(self):
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps:
            raise ValueError("StochasticWeightAveraging: steps per epoch unknown (the data "
                             "has no length); pass steps_per_epoch=.")
        first, every = round(self.start * steps), max(1, round(self.period * steps))
        return int(steps), int(first), int(every)

    def on_train_begin(self, logs=None):
        self._steps, self._first, self._every = self._schedule()
        if self.recompute_bn and self.bn_data is None and _batch_norm_layers(self.model):
            raise ValueError(
                f"StochasticWeightAveraging: model {self.model.name!r} has BatchNorm layers "
                "whose statistics must be recomputed for the averaged weights; pass "
                "bn_data= (e.g. the training data) or recompute_bn=False.")
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        if self.cycle and self._epoch % self.cycle == 0:
            self._last = None     # a new cycle counts its steps from 0

    def _points(self, n):
        """Averaging points among the first n steps."""
        return 0 if n < self._first else (n - self._first) // self._every + 1

    def on_train_batch_end(self, batch, logs=None):
        epoch = self._epoch % self.cycle if self.cycle else self._epoch
        n = epoch * self._steps + int(batch) + 1
        # with steps_per_execution > 1 batches arrive in strides: average once
        # when a point was passed since the last call
        last = n - 1 if self._last is None else self._last
        self._last = n
        if self._points(n) > self._points(last):
            self._update_fn()

    def swap(self):
        """Load the average into the model and recompute the BN statistics."""
        if int(self.count.numpy()) == 0:
            raise ValueError(
                f"StochasticWeightAveraging: no weights were averaged (start={self.start}, "
                f"period={self.period} epochs); start averaging earlier or train longer.")
        for variable, average in zip(self._targets, self.average):
            variable.assign(tf.cast(average, variable.dtype))
        if self.recompute_bn and self.bn_data is not None:
            recompute_batch_norm(self.model, self.bn_data, self.bn_steps)

    def on_epoch_end(self, epoch, logs=None):
        if self.cycle and (int(epoch) + 1) % self.cycle == 0:
            self.swap()
            self.count.assign(0)   # the next cycle averages from scratch

    def on_train_end(self, logs=None):
        if self.cycle and int(self.count.numpy()) == 0:
            return   # the last cycle's average is already in the model
        if self.swap_at_end:
            self.swap()

    def get_config(self):
        """Settings without the model or ``bn_data`` (pass them to ``from_config``)."""
        return {"start": self.start, "period": self.period,
                "steps_per_epoch": self.steps_per_epoch, "weights": self.weights,
                "bn_steps": self.bn_steps, "recompute_bn": self.recompute_bn,
                "swap_at_end": self.swap_at_end, "cycle": self.cycle}

    @classmethod
    def from_config(cls, config, model=None, bn_data=None):
        return cls(model=model, bn_data=bn_data, **config)


# Callbacks that live with their concept, reachable here too (imported lazily
# so `mntk.callbacks` does not pull in the cost walker or tfmot).
_LAZY = {"CostLogger": "mntk.cost", "ExitWeightRamp": "mntk.early_exit"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mntk.callbacks' has no attribute {name!r}")
