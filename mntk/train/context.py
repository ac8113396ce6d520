"""What every stage shares: the run context, worker roles and folders, atomic
JSON files, the epoch bookkeeping of resumable fits and the epoch-keyed data.

Multi-worker runs (``tf.distribute.MultiWorkerMirroredStrategy``) share one
work directory: the chief (worker 0) writes the stage folders; the other
workers write the same files into a private ``.worker_<type>_<index>`` folder
so no two processes write one file.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from mntk import data as data_lib
from mntk.compat import keras
from mntk.train.errors import RecipeError
from mntk.train.schema import STRATEGIES


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``config.strategy``.

    ``multi_worker`` reads the cluster from the ``TF_CONFIG`` environment
    variable; ``tpu`` connects to ``tpu`` (a name or grpc address; empty for a
    local TPU VM).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise RecipeError(
                "strategy='multi_worker' needs the TF_CONFIG environment variable "
                "describing the cluster (see BUILD.md, 'Several machines').")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise RecipeError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")


def _task() -> Dict[str, Any]:
    return json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})


def is_chief() -> bool:
    """True on the worker that writes files (worker 0, or a single process)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0
        and "chief" not in tf_config.get("cluster", {}))


@dataclasses.dataclass
class RunContext:
    """What the stages share: config, strategy, data and the current model."""
    config: Any
    workdir: str
    strategy: tf.distribute.Strategy
    data: Any = None
    model: Optional[keras.Model] = None
    stage_dir: str = ""
    extra_callbacks: List[keras.callbacks.Callback] = dataclasses.field(default_factory=list)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch_size(self, batch_size: int) -> int:
        return batch_size * self.replicas if self.config.train.scale_with_replicas else batch_size

    def writable_dir(self, sub: str = "") -> str:
        """Stage sub-folder on the chief; a private folder on other workers."""
        if is_chief():
            return os.path.join(self.stage_dir, sub)
        # named from the task, not hash(): str hashes change between processes,
        # and a restarted worker must find its own backup again
        task = _task()
        name = f".worker_{task.get('type', 'worker')}_{task.get('index', 0)}"
        return os.path.join(self.stage_dir, name, sub)

    def steps(self) -> int:
        """Training steps per epoch at the global batch size, capped by
        ``train.max_steps_per_epoch`` (smoke runs) so that learning-rate and
        sparsity schedules span the steps that actually run."""
        if self.data.x_train is not None:
            n = len(self.data.x_train) // self.global_batch_size(self.config.data.batch_size)
        elif self.data.steps_per_epoch:
            n = int(self.data.steps_per_epoch)
        else:
            raise RecipeError("the data set does not say how many steps an epoch has; set "
                              "data.steps_per_epoch in the recipe.")
        cap = self.config.train.max_steps_per_epoch
        return max(1, min(n, cap)) if cap else n


def load_data(config, **overrides):
    """``mntk.data.load`` with the recipe's ``config.data`` fields (None
    fields are left to the loader; ``data.seed`` None is the run's seed),
    ``overrides`` set over them (a stage's own ``mix``)."""
    fields = {k: v for k, v in config.data.items() if v is not None}
    fields.update(overrides)
    fields = {k: dict(v) if hasattr(v, "items") else v for k, v in fields.items()}
    name = fields.pop("name")
    fields.setdefault("seed", int(config.seed))
    return data_lib.load(name, **fields)


def epoch_keyed_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                        first_epoch: int, epochs: int,
                        transform: Optional[Callable] = None) -> tf.data.Dataset:
    """Training batches for epochs ``first_epoch..epochs-1``, one after another.

    Epoch ``e`` is shuffled by ``stateless_shuffle`` with seed ``(seed, e)``, so
    the order depends only on the epoch number: a run resumed at epoch ``e``
    sees exactly the batches an uninterrupted run would. Incomplete final
    batches are dropped so every epoch has the same number of steps.
    """
    n = len(x)
    steps = n // batch_size
    if steps == 0:
        raise RecipeError(f"batch size {batch_size} is larger than the {n} training "
                          "examples; lower data.batch_size.")
    xs, ys = tf.constant(x), tf.constant(y)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        order = order[: steps * batch_size]
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    ds = ds.map(lambda idx: (tf.gather(xs, idx), tf.gather(ys, idx)))
    if transform is not None:
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def saved_epoch(backup_dir: str) -> int:
    """Epochs finished according to a ``BackupAndRestore`` directory (0 if none)."""
    for sub in ("chief", ""):
        path = tf.train.latest_checkpoint(os.path.join(backup_dir, sub))
        if path:
            reader = tf.train.load_checkpoint(path)
            for key in reader.get_variable_to_shape_map():
                if key.startswith("ckpt_saved_epoch"):
                    return int(reader.get_tensor(key)) + 1
    return 0


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` atomically (a killed run never leaves half a file); only
    the chief writes."""
    if not is_chief():
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"summary value of type {type(value).__name__} is not JSON-serializable")
