"""What the recipe stages share: data bundling, compile, fit with the
resumable callbacks, evaluation and the cost figures of a model.

Kept apart from ``mntk.stages`` so each stage reads as the few calls it makes.
"""
import csv
import math
import os
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from mntk.compat import keras
from mntk.train import RecipeError, epoch_keyed_dataset, is_chief, saved_epoch, write_json

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "cosine_restarts")


def steps(ctx) -> int:
    """Training steps per epoch at the global batch size, capped by
    ``train.max_steps_per_epoch`` (smoke runs) so that learning-rate and
    sparsity schedules span the steps that actually run."""
    data = ctx.data
    if data.x_train is not None:
        n = len(data.x_train) // ctx.global_batch_size(ctx.config.data.batch_size)
    elif data.steps_per_epoch:
        n = int(data.steps_per_epoch)
    else:
        raise RecipeError("the data set does not say how many steps an epoch has; set "
                          "data.steps_per_epoch in the recipe.")
    cap = int(ctx.config.train.get("max_steps_per_epoch", 0) or 0)
    return max(1, min(n, cap)) if cap else n


def make_optimizer(train_cfg, steps_per_epoch: int, replicas: int = 1):
    """SGD/Adam/AdamW with a constant, cosine or cosine-with-restarts schedule."""
    lr = float(train_cfg.learning_rate)
    if train_cfg.get("scale_with_replicas", True):
        lr *= replicas
    schedule_name = train_cfg.get("schedule", "constant")
    total = max(1, int(train_cfg.epochs) * steps_per_epoch)
    if schedule_name == "constant":
        schedule = lr
    elif schedule_name == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, total)
    elif schedule_name == "cosine_restarts":
        cycles = int(train_cfg.get("restart_cycles", 4))
        # first cycle length chosen so `cycles` doubling cycles fill the run
        first = max(1, total // (2 ** cycles - 1))
        schedule = keras.optimizers.schedules.CosineDecayRestarts(lr, first, t_mul=2.0)
    else:
        raise RecipeError(f"train.schedule={schedule_name!r} is unknown; use one of "
                          f"{', '.join(SCHEDULES)}.")
    name = train_cfg.get("optimizer", "adam")
    wd = float(train_cfg.get("weight_decay", 0.0)) or None
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=float(train_cfg.get("momentum", 0.9)),
                                    nesterov=bool(train_cfg.get("nesterov", True)),
                                    weight_decay=wd)
    if name == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=wd or 1e-4)
    raise RecipeError(f"train.optimizer={name!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")


def soft_labels(config) -> bool:
    return bool(config.data.get("mix")) or bool(config.data.get("one_hot", False))


def base_loss(config):
    smoothing = float(config.train.get("label_smoothing", 0.0))
    if soft_labels(config):
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    if smoothing:
        raise RecipeError("train.label_smoothing needs one-hot labels; set data.one_hot=True "
                          "or use tricks.adaptive_smoothing.")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy_metric(config):
    if soft_labels(config):
        return keras.metrics.CategoricalAccuracy(name="accuracy")
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def attach_tricks(model, config, epsilon_key: str = "epsilon") -> Tuple[Dict, Any, List]:
    """SRIP and adaptive label smoothing as ``config.tricks`` asks.

    Returns (summary of the settings, the loss, the callbacks they need).
    """
    tricks = config.get("tricks", {})
    summary, callbacks = {}, []
    loss = base_loss(config)
    srip_cfg = tricks.get("srip", {})
    if srip_cfg.get("enabled", False):
        from mntk import callbacks as cb, regularizers
        srip = regularizers.apply_srip(
            model, float(srip_cfg.coefficient), layers=srip_cfg.get("layers", "pointwise"),
            power_iterations=int(srip_cfg.get("power_iterations", 2)),
            squared=bool(srip_cfg.get("squared", False)))
        if srip_cfg.get("schedule"):
            callbacks.append(cb.CoefficientSchedule(srip_cfg.schedule, target=srip))
        summary["srip"] = {k: v for k, v in srip_cfg.items()}
    als_cfg = tricks.get("adaptive_smoothing", {})
    if als_cfg.get("enabled", False):
        from mntk import losses
        classifier = classifier_layer(model, config)
        loss = losses.AdaptiveLabelSmoothing(classifier, epsilon=float(als_cfg[epsilon_key]),
                                             from_logits=True,
                                             refresh=als_cfg.get("refresh", "epoch"))
        callbacks.append(loss.callback())
        summary["adaptive_smoothing"] = {"epsilon": float(als_cfg[epsilon_key]),
                                         "refresh": als_cfg.get("refresh", "epoch")}
    return summary, loss, callbacks


def classifier_layer(model, config):
    """The final Dense layer named ``config.model.classifier``, or the tfmot
    pruning/QAT wrapper around it (AdaptiveLabelSmoothing unwraps it itself)."""
    name = config.model.get("classifier", "logits")
    for layer in model.layers:
        if layer.name == name or getattr(layer, "layer", layer).name == name:
            return layer
    raise RecipeError(f"model {model.name!r} has no classifier layer {name!r}; set "
                      "model.classifier to the final Dense layer's name.")


@keras.utils.register_keras_serializable(package="mntk")
def first_column_accuracy(y_true, y_pred):
    """Top-1 accuracy against the label in column 0 of ``y_true`` (the
    ``[label, teacher logits...]`` rows that ``mntk.losses.Distillation`` fits on)."""
    return keras.metrics.sparse_categorical_accuracy(y_true[:, :1], y_pred)


def compile_model(model, config, loss, steps_per_epoch: int, replicas: int = 1,
                  train_cfg=None, metrics=None):
    model.compile(optimizer=make_optimizer(train_cfg or config.train, steps_per_epoch, replicas),
                  loss=loss, metrics=metrics or [accuracy_metric(config)])


def section_train_config(config, section: str):
    """``config.train`` with the optimizer fields a stage section overrides
    (``epochs``, ``learning_rate``, ``optimizer``, ``schedule``, ...)."""
    merged = config.train.copy_and_resolve_references()
    for key, value in config[section].items():
        if key in merged:
            merged[key] = value
    return merged


class EpochSeededRandomness(keras.callbacks.Callback):
    """Re-seeds every layer's random generator (dropout & co.) per epoch.

    The generator state of Keras layers is not part of ``BackupAndRestore``'s
    checkpoint; seeding it from ``(seed, epoch)`` makes epoch ``e`` draw the
    same masks whether or not the run was resumed, like the epoch-keyed data.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model._flatten_layers(include_self=False):
            generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
            if generator is not None:
                generator.reset_from_seed(self.seed * 100003 + int(epoch))


class StateBackup(keras.callbacks.Callback):
    """Checkpoints variables that live outside the model (SRIP's power-iteration
    vectors and coefficient) next to ``BackupAndRestore``'s checkpoint: saved
    at each epoch end, restored when training starts again.

    Like ``BackupAndRestore`` under a multi-worker strategy, every worker saves
    (reading a replica-synced variable is a collective all of them must join),
    the others into a private folder, and all restore from the chief's.
    """

    def __init__(self, variables, directory: str, chief: bool = True, worker: str = ""):
        super().__init__()
        self.directory = directory
        self.write_dir = directory if chief else f"{directory}_{worker or 'worker'}"
        self.checkpoint = tf.train.Checkpoint(state=list(variables))
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=1)

    def on_train_begin(self, logs=None):
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            self.checkpoint.restore(latest).assert_consumed()

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch)

    def on_train_end(self, logs=None):
        if os.path.isdir(self.write_dir):  # finished: nothing left to resume
            tf.io.gfile.rmtree(self.write_dir)


class TechniqueLogger(keras.callbacks.Callback):
    """Adds ``sparsity`` (mean over pruned kernels) and ``mean_weight_bits`` of
    the model being trained to the epoch logs (History, CSV, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        names = {type(l).__name__ for l in self.model.layers}
        if "PruneLowMagnitude" in names:
            from mntk import pruning
            values = list(pruning.sparsity(self.model).values())
            logs["sparsity"] = float(np.mean(values)) if values else 0.0
        if "QuantizeWrapperV2" in names:
            from mntk import quantization
            logs["mean_weight_bits"] = float(quantization.mean_weight_bits(self.model))


def _writable_dir(ctx, sub: str) -> str:
    """Stage sub-folder on the chief; a throw-away folder on other workers."""
    if is_chief():
        return os.path.join(ctx.stage_dir, sub)
    # named from the task, not hash(): str hashes change between processes, and
    # a restarted worker must find its own backup again
    import json
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    name = f".worker_{task.get('type', 'worker')}_{task.get('index', 0)}"
    return os.path.join(ctx.stage_dir, name, sub)


def fit(ctx, model, epochs: int, callbacks: List, teacher=None) -> Dict[str, List[float]]:
    """``model.fit`` with resuming, logs, best-model checkpoint and NaN guard.

    ``teacher``: a float model whose logits are appended to every label row
    (``[label, teacher logits...]``), the targets ``mntk.losses.Distillation``
    expects. Returns the per-epoch history of the whole stage (resumed epochs
    included).
    """
    config, data = ctx.config, ctx.data
    # one backup folder for every worker: BackupAndRestore writes the chief's
    # checkpoint and worker-private temporaries there, and all workers restore
    # from the chief's, so they resume at the same epoch.
    backup_dir = os.path.join(ctx.stage_dir, "backup")
    first = saved_epoch(backup_dir)
    gbs = ctx.global_batch_size(config.data.batch_size)
    n_steps = steps(ctx)
    if teacher is not None and soft_labels(config):
        raise RecipeError("distillation needs integer labels; turn off data.mix and "
                          "data.one_hot for the distilled stage.")
    if data.x_train is not None:
        y = data.y_train
        if teacher is not None:
            y = _with_teacher_logits(teacher, data.x_train, y)
        if soft_labels(config) and y.ndim == 1:
            y = np.eye(data.num_classes, dtype=np.float32)[y]
        if n_steps < len(data.x_train) // gbs:
            # capped epochs (smoke runs) still start at their own epoch key, so a
            # resumed run sees the batches an uninterrupted one would
            train_ds = epoch_keyed_dataset(data.x_train, y, gbs, int(config.seed), first,
                                           first + 1).take(n_steps)
            for e in range(first + 1, epochs):
                train_ds = train_ds.concatenate(epoch_keyed_dataset(
                    data.x_train, y, gbs, int(config.seed), e, e + 1).take(n_steps))
        else:
            train_ds = epoch_keyed_dataset(data.x_train, y, gbs, int(config.seed), first,
                                           epochs)
        if config.data.get("mix"):
            from mntk import data as data_lib
            train_ds = data_lib.mix_batches(train_ds, config.data.mix,
                                            alpha=float(config.data.get("mix_alpha", 1.0)),
                                            seed=int(config.seed) + first)
    else:
        train_ds = data.train.repeat()
        if teacher is not None:
            train_ds = train_ds.map(_teacher_map(teacher))
    validation = _validation(config, data, teacher)
    n_outputs = len(model.outputs)
    if n_outputs > 1:  # multi-exit models: the same label for every output
        train_ds = train_ds.map(lambda x, y: (x, (y,) * n_outputs))
        validation = validation.map(lambda x, y: (x, (y,) * n_outputs))
    history_csv = os.path.join(_writable_dir(ctx, ""), "history.csv")
    from mntk import cost, regularizers
    state = [v for r in regularizers.orthogonality_regularizers(model)
             for v in getattr(r, "variables", [])]
    all_callbacks = list(callbacks) + [
        EpochSeededRandomness(int(config.seed)),
        TechniqueLogger(),
        cost.CostLogger(task=config.get("cost", {}).get("task"),
                        freebie=bool(config.get("cost", {}).get("freebie", False))),
        StateBackup(state, backup_dir + "_state", chief=is_chief(),
                    worker=os.path.basename(os.path.dirname(_writable_dir(ctx, "x")))),
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.CSVLogger(history_csv, append=first > 0),
        keras.callbacks.TensorBoard(_writable_dir(ctx, "tensorboard"), profile_batch=0),
        keras.callbacks.ModelCheckpoint(
            os.path.join(_writable_dir(ctx, ""), "best.weights.h5"),
            monitor="val_loss", mode="min", save_best_only=True, save_weights_only=True),
        keras.callbacks.TerminateOnNaN(),
    ] + list(getattr(ctx, "extra_callbacks", []))
    model.fit(train_ds, epochs=epochs, steps_per_epoch=n_steps, validation_data=validation,
              callbacks=all_callbacks, verbose=int(config.get("verbose", 2)))
    history = read_history(history_csv)
    losses = history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses):
        raise RecipeError(
            f"training loss became NaN/inf at epoch {next(i for i, v in enumerate(losses) if not math.isfinite(v))}"
            f" (learning rate {config.train.learning_rate}); lower train.learning_rate "
            "or check the input data.")
    return history


def _validation(config, data, teacher=None):
    if data.x_val is not None:
        y = data.y_val
        if teacher is not None:
            y = _with_teacher_logits(teacher, data.x_val, y)
        elif soft_labels(config) and y.ndim == 1:
            y = np.eye(data.num_classes, dtype=np.float32)[y]
        return tf.data.Dataset.from_tensor_slices((data.x_val, y)).batch(256)
    if teacher is not None:
        return data.validation.map(_teacher_map(teacher))
    return data.validation


def _with_teacher_logits(teacher, x, y):
    """In-memory data: the teacher runs once over the split, not every epoch."""
    logits = teacher.predict(x, batch_size=256, verbose=0)
    return np.concatenate([np.asarray(y, np.float32).reshape(-1, 1), logits], 1)


def _teacher_map(teacher):
    """Streamed data: teacher logits computed batch by batch in the pipeline."""
    def add_logits(x, y):
        logits = tf.cast(teacher(x, training=False), tf.float32)
        return x, tf.concat([tf.reshape(tf.cast(y, tf.float32), (-1, 1)), logits], 1)
    return add_logits


def read_history(path: str) -> Dict[str, List[float]]:
    """Per-epoch columns of a Keras CSVLogger file."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    columns: Dict[str, List[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                pass
    return columns


def predict_logits(model, x: np.ndarray, batch_size: int = 256):
    out = model.predict(x, batch_size=batch_size, verbose=0)
    return out


def evaluate(model, data) -> float:
    """Top-1 accuracy of the (last) output on the test split."""
    if data.x_test is not None:
        out = predict_logits(model, data.x_test)
        if isinstance(out, list):
            out = out[-1]
        return float(np.mean(np.argmax(out, -1) == data.y_test))
    # predict + labels rather than model.evaluate: the compiled metrics may
    # expect distillation targets, the test split has plain labels.
    out = model.predict(data.test.map(lambda x, y: x), verbose=0)
    if isinstance(out, list):
        out = out[-1]
    labels = np.concatenate([np.asarray(y) for _, y in data.test])
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return float(np.mean(np.argmax(out, -1) == labels))


def cost_summary(ctx, model, **estimate_kwargs) -> Dict[str, Any]:
    """The model's MicroNet cost (written to ``cost.json``) for the summary."""
    from mntk import cost
    task = ctx.config.get("cost", {}).get("task")
    freebie = bool(ctx.config.get("cost", {}).get("freebie", False))
    report = cost.estimate(model, task=task, freebie=freebie, **estimate_kwargs)
    write_json(os.path.join(ctx.stage_dir, "cost.json"), report.to_json())
    write_json(os.path.join(ctx.workdir, "cost.json"), report.to_json())
    out = {"params": report.params, "ops": report.ops, "score": report.score,
           "param_bits": report.param_bits, "task": task, "freebie": freebie}
    note = ctx.config.get("cost", {}).get("note")
    if note:
        out["note"] = note
    return {"cost": out}


def verify_figures(check) -> Dict[str, Any]:
    """The summary figures of a ``mntk.export.verify`` result (final output)."""
    return {"agreement": check.agreement, "max_abs_diff": check.max_abs_diff,
            "accuracy_tflite": check.accuracy_tflite, "accuracy_keras": check.accuracy_keras}
