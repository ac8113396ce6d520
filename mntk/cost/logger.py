"""A Keras callback that logs the model's MicroNet cost at epoch ends."""
from mntk.compat import keras

__all__ = ["CostLogger"]


@keras.utils.register_keras_serializable(package="mntk")
class CostLogger(keras.callbacks.Callback):
    """Puts `cost_params`, `cost_ops` (and `cost_score` with a task) into `logs`.

    Counted with `mntk.cost.estimate(self.model, task=..., freebie=...)` (the
    MicroNet rules: params = storage bits / 32, ops in 32-bit equivalents,
    score = params/P_base + ops/M_base), so pruning and quantization show up in
    the history as they move the score. Place it before `CSVLogger` /
    `TensorBoard` in the callbacks list so they see the new keys. Between
    recounts (`every` > 1) the last values are repeated, so every epoch has
    the same columns.

    Args:
      task: "cifar100", "imagenet" or None (no score).
      every: recount every this many epochs (the first epoch always counts).
      freebie: count params and multiplies at 16 bits (unquantized models).
      input_shape: passed to `estimate` for models with unknown dimensions.
    """

    def __init__(self, task=None, every=1, freebie=False, input_shape=None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"CostLogger every={every!r} must be a positive integer.")
        if task is not None:
            from mntk.cost.baselines import baseline
            baseline(task)
        self.task = task
        self.every = int(every)
        self.freebie = bool(freebie)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.last = None
        self.report = None

    def _count(self):
        from mntk.cost.walker import estimate
        self.report = estimate(self.model, task=self.task, freebie=self.freebie,
                               input_shape=self.input_shape)
        self.last = {"cost_params": float(self.report.params),
                     "cost_ops": float(self.report.ops)}
        if self.task is not None:
            self.last["cost_score"] = float(self.report.score)

    def on_epoch_end(self, epoch, logs=None):
        if self.last is None or (epoch + 1) % self.every == 0:
            self._count()
        if logs is not None:
            logs.update(self.last)

    def get_config(self):
        return {"task": self.task, "every": self.every, "freebie": self.freebie,
                "input_shape": None if self.input_shape is None else list(self.input_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
