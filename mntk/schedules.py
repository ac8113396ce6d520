"""Learning-rate schedules and optimizer resets the entries trained with.

- ``CosineCycles``: equal cosine cycles, each from the base rate down to a
  floor, the way KAIST ran four 150-epoch ``CosineAnnealingLR(T_max=150,
  eta_min=5e-4)`` runs (micronet_main.py:87-124) and OSI its pruning rounds:
  with c = cycle length and t the position in the current cycle (both in
  epochs when ``steps_per_epoch`` is given, as torch steps its scheduler once
  an epoch, else in steps),
  ``lr(t) = floor + (base - floor) * (1 + cos(pi * t / c)) / 2``.
- ``step_decay``: piecewise-constant rates switched at given epochs (the TTQ
  code's 0.1 -> 0.01 @82 -> 0.001 @123 -> 0.0002 @300).
- ``ResetOptimizerState``: zero the optimizer's slots (momentum, Adam
  moments) every n steps: "a fresh optimizer each cycle" without rebuilding
  the train function. The step counter is kept, so schedules run on.
"""
import math

import tensorflow as tf

from mntk.compat import keras

__all__ = ["CosineCycles", "step_decay", "ResetOptimizerState"]


@keras.utils.register_keras_serializable(package="mntk")
class CosineCycles(keras.optimizers.schedules.LearningRateSchedule):
    """Equal cosine cycles from ``initial_learning_rate`` to ``min_learning_rate``.

    Args:
      initial_learning_rate: the rate at the start of every cycle.
      cycle_steps: optimizer steps per cycle (> 0).
      min_learning_rate: the floor each cycle anneals to (torch's eta_min).
      steps_per_epoch: when given, the rate changes once an epoch (position =
        whole epochs into the cycle), as torch's per-epoch ``scheduler.step()``.
    """

    def __init__(self, initial_learning_rate, cycle_steps, min_learning_rate=0.0,
                 steps_per_epoch=None, name=None):
        if int(cycle_steps) < 1:
            raise ValueError(f"CosineCycles: cycle_steps={cycle_steps!r} must be >= 1.")
        if not 0 <= float(min_learning_rate) <= float(initial_learning_rate):
            raise ValueError(
                f"CosineCycles: min_learning_rate={min_learning_rate!r} must be in "
                f"[0, initial_learning_rate={initial_learning_rate!r}].")
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"CosineCycles: steps_per_epoch={steps_per_epoch!r} must be >= 1.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.cycle_steps = int(cycle_steps)
        self.min_learning_rate = float(min_learning_rate)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.name = name

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        position = tf.math.floormod(step, float(self.cycle_steps))
        length = float(self.cycle_steps)
        if self.steps_per_epoch:
            position = tf.floor(position / self.steps_per_epoch)
            length = max(1.0, math.floor(self.cycle_steps / self.steps_per_epoch))
        cosine = 0.5 * (1.0 + tf.cos(math.pi * position / length))
        return self.min_learning_rate + (self.initial_learning_rate
                                         - self.min_learning_rate) * cosine

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "cycle_steps": self.cycle_steps,
                "min_learning_rate": self.min_learning_rate,
                "steps_per_epoch": self.steps_per_epoch, "name": self.name}


def step_decay(initial_learning_rate, epochs, rates, steps_per_epoch):
    """``initial_learning_rate`` until ``epochs[0]``, then ``rates[0]`` until
    ``epochs[1]``, ... (Keras ``PiecewiseConstantDecay`` on step boundaries)."""
    epochs, rates = tuple(epochs), tuple(rates)
    if len(epochs) != len(rates):
        raise ValueError(f"step_decay: {len(epochs)} epochs {epochs} but {len(rates)} "
                         f"rates {rates}; give one rate per boundary epoch.")
    if list(epochs) != sorted(set(epochs)) or any(e < 1 for e in epochs):
        raise ValueError(f"step_decay: epochs={epochs} must be increasing and >= 1.")
    if not epochs:
        return float(initial_learning_rate)
    # PiecewiseConstantDecay switches once step > boundary: the last step of
    # the epoch before, so epoch e's first step has the new rate
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(e) * int(steps_per_epoch) - 1 for e in epochs],
        [float(initial_learning_rate)] + [float(r) for r in rates])


class ResetOptimizerState(keras.callbacks.Callback):
    """Zero the optimizer's slot variables at every multiple of ``every_steps``
    (not at step 0): a fresh momentum / Adam state for each cycle, as an entry
    that built a new optimizer per cycle had. ``iterations`` is kept."""

    def __init__(self, every_steps):
        super().__init__()
        if int(every_steps) < 1:
            raise ValueError(f"ResetOptimizerState: every_steps={every_steps!r} must be >= 1.")
        self.every_steps = int(every_steps)
        self.resets = 0

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        step = int(keras.backend.get_value(optimizer.iterations))
        if step and step % self.every_steps == 0:
            for variable in optimizer.variables():
                if variable is not optimizer.iterations and "iteration" not in variable.name:
                    variable.assign(tf.zeros_like(variable))
            self.resets += 1
