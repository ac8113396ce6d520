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

__all__ = ["CoefficientSchedule", "AdaptiveSmoothingRefresh", "SCHEDULE_PRESETS"]

# SRIP paper (Bansal et al. 2018, arXiv 1810.09102), 200 epochs: 0.1 -> 1e-3
# (epoch 20) -> 1e-4 (50) -> 1e-6 (70) -> 0 (120). The reference code multiplies
# a base coefficient (1e-2) by these factors, so the preset is relative.
SCHEDULE_PRESETS = {
    "srip_paper": {0: 0.1, 20: 1e-3, 50: 1e-4, 70: 1e-6, 120: 0.0},
}


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

    - a preset name ("srip_paper": factors 0.1 @0, 1e-3 @20, 1e-4 @50,
      1e-6 @70, 0 @120; relative by default, as in the SRIP reference code);
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
      relative: multiply by base (default: True for presets, False otherwise).
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
            relative = True if relative is None else relative
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


# Callbacks that live with their concept, reachable here too (imported lazily
# so `mntk.callbacks` does not pull in the cost walker or tfmot).
_LAZY = {"CostLogger": "mntk.cost", "ExitWeightRamp": "mntk.early_exit"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mntk.callbacks' has no attribute {name!r}")
