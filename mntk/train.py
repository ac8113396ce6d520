"""Recipe runner: config -> data -> model -> stages -> work directory.

A recipe is an ``ml_collections`` config (``recipes/*.py``, ``get_config()``).
``run(config, workdir)`` executes its ``stages`` in order (``train``,
``early_exit``, ``prune``, ``quantize``, ``export``; see ``mntk.stages``) inside
the ``tf.distribute`` strategy the config names, and writes::

    WORKDIR/stages/<k>_<stage>/   model.keras, history.csv, tensorboard/,
                                  summary.json (the stage's own figures)
    WORKDIR/model.keras           the last stage's model (model.h5 for a QAT model)
    WORKDIR/cost.json             mntk.cost report of the last counted model
    WORKDIR/*.tflite, calibration.json, staged_tflite/   from export stages
    WORKDIR/summary.json          every stage's summary merged

Resuming: a stage whose ``summary.json`` exists is skipped (its model is
loaded); inside a stage, ``BackupAndRestore`` keeps the last finished epoch,
and in-memory data sets are shuffled with a seed keyed on the epoch so a
resumed run sees the same batches as an uninterrupted one.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from mntk.compat import keras

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class RecipeError(ValueError):
    """A recipe config asks for something the runner cannot do."""


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
    summary: Dict[str, Any] = dataclasses.field(default_factory=dict)
    stage_dir: str = ""
    calibration: Any = None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch_size(self, batch_size: int) -> int:
        scale = self.config.train.get("scale_with_replicas", True)
        return batch_size * self.replicas if scale else batch_size


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


def write_json(path: str, obj: Dict[str, Any]) -> None:
    """Write ``obj`` atomically (a killed run never leaves half a file)."""
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
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"summary value of type {type(value).__name__} is not JSON-serializable")


def run(config, workdir: str, stages: Optional[List[str]] = None,
        extra_callbacks: Optional[List[keras.callbacks.Callback]] = None) -> Dict[str, Any]:
    """Run a recipe's stages into ``workdir`` and return the merged summary.

    Args:
      config: an ``ml_collections.ConfigDict`` from a recipe's ``get_config()``.
      workdir: output directory (created; reused to resume).
      stages: run only these stage names (default: ``config.stages``).
      extra_callbacks: appended to every ``fit`` (tests use this to kill a run).
    """
    from mntk import stages as stage_lib  # stages import heavy technique modules

    keras.utils.set_random_seed(int(config.seed))
    # Dropout & co. draw from tf.random.Generator variables instead of stateful
    # ops, so their RNG state is checkpointed and a resumed run continues the
    # same random stream.
    keras.backend.experimental.enable_tf_random_generator()
    if config.get("deterministic", False):
        tf.config.experimental.enable_op_determinism()
    os.makedirs(workdir, exist_ok=True)
    strategy = make_strategy(config.strategy, config.get("tpu", ""))
    ctx = RunContext(config=config, workdir=workdir, strategy=strategy)
    ctx.extra_callbacks = list(extra_callbacks or [])
    ctx.data = stage_lib.load_data(config)
    names = list(stages or config.stages)
    unknown = [s for s in names if s not in stage_lib.STAGES]
    if unknown:
        raise RecipeError(f"Unknown stage(s) {unknown} in config.stages; known stages: "
                          f"{', '.join(stage_lib.STAGES)}.")
    started = time.time()
    summary: Dict[str, Any] = {"recipe": config.get("name", ""), "stages": []}
    for k, name in enumerate(names):
        ctx.stage_dir = os.path.join(workdir, "stages", f"{k}_{name}")
        done = os.path.join(ctx.stage_dir, "summary.json")
        if os.path.exists(done):
            with open(done) as f:
                stage_summary = json.load(f)
            ctx.model = stage_lib.load_stage_model(ctx, name)
            print(f"mntk: stage {k} '{name}' already done, resuming after it", flush=True)
        else:
            print(f"mntk: stage {k} '{name}'", flush=True)
            os.makedirs(ctx.stage_dir, exist_ok=True)
            stage_summary = stage_lib.STAGES[name](ctx)
            stage_lib.save_stage_model(ctx)
            write_json(done, stage_summary)
        summary["stages"].append({"name": name, **{k2: v for k2, v in stage_summary.items()
                                                     if k2 != "name"}})
        stage_lib.merge_summary(summary, name, stage_summary)
    summary["seconds"] = round(time.time() - started, 2)
    if ctx.model is not None and is_chief():
        stage_lib.save_model(ctx.model, workdir)
    write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
