"""``fit``: ``model.fit`` made resumable, logged and guarded.

A killed run resumes inside a stage at the last finished epoch:
``BackupAndRestore`` keeps the model and optimizer, ``StateBackup`` the
variables outside the model (SRIP's, global pruning's), the epoch-keyed data set replays the same
batches and ``EpochSeededRandomness`` the same dropout masks. Every fit writes
``history.csv`` (CSVLogger), ``tensorboard/`` and ``best.weights.h5`` in the
stage folder, and stops with a ``RecipeError`` when the loss diverges.
"""
import csv
import math
import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from mntk import cost, regularizers, schedules
from mntk import data as data_lib
from mntk.compat import keras
from mntk.train.callbacks import (CheckedBackupAndRestore, DivergenceGuard,
                                  EpochSeededRandomness, StateBackup, TechniqueLogger,
                                  backup_error, kill_at_callbacks)
from mntk.train.context import epoch_keyed_dataset, is_chief, load_data, saved_epoch
from mntk.train.disk import SpaceGuard
from mntk.train.errors import RecipeError
from mntk.train.objectives import soft_labels


def training_data(ctx, first: int, epochs: int, teacher=None,
                  mix=None) -> tf.data.Dataset:
    """Batches of epochs ``first..epochs-1`` (in-memory data: epoch-keyed, so a
    resumed run sees the batches an uninterrupted one would). ``mix``: this
    fit's batch mixing, 'none' for unmixed batches (None: ``data.mix``)."""
    config, data = ctx.config, ctx.data
    gbs = ctx.global_batch_size(config.data.batch_size)
    n_steps = ctx.steps()
    mix = config.data.mix if mix is None else (None if mix == "none" else mix)
    if data.x_train is None:
        if mix != config.data.mix:   # streamed data is mixed in its pipeline: this fit's
            data = load_data(config, mix=mix, one_hot=soft_labels(config))
        train_ds = data.train.repeat()
        return train_ds.map(_teacher_map(teacher)) if teacher is not None else train_ds
    y = data.y_train
    if teacher is not None:
        y = _with_teacher_logits(teacher, data.x_train, y)
    if soft_labels(config) and y.ndim == 1:
        y = np.eye(data.num_classes, dtype=np.float32)[y]
    seed = int(config.seed)
    if n_steps < len(data.x_train) // gbs:
        # capped epochs (smoke runs) still start at their own epoch key
        train_ds = epoch_keyed_dataset(data.x_train, y, gbs, seed, first, first + 1).take(n_steps)
        for e in range(first + 1, epochs):
            train_ds = train_ds.concatenate(
                epoch_keyed_dataset(data.x_train, y, gbs, seed, e, e + 1).take(n_steps))
    else:
        train_ds = epoch_keyed_dataset(data.x_train, y, gbs, seed, first, epochs)
    if mix:
        train_ds = data_lib.mix_batches(train_ds, mix,
                                        alpha=float(config.data.mix_alpha), seed=seed + first)
    return train_ds


def validation_data(config, data, teacher=None) -> tf.data.Dataset:
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


def validation_batch(data, n: int = 32):
    """A few validation inputs, to check the model's outputs each epoch."""
    if data.x_val is not None:
        return data.x_val[:n]
    for x, _ in data.validation.take(1):
        return x[:n]
    return None


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


def build_compiled_metrics(model, label_spec) -> None:
    """Creates the variables of ``model``'s compiled loss and metrics now.

    Keras otherwise creates some of them inside the first traced train step:
    the loss means of each output of a multi-output model, and the metric
    objects for metrics given by name (``"accuracy"``) or as functions. A
    variable created there makes TensorFlow trace the step a second time
    (``train_function.experimental_get_tracing_count() == 2``), which cost
    4-8 CPU-s a stage for the entries' smoke nets. Keras picks a metric's
    form (sparse or not) from the shapes only, so zero tensors of the labels'
    and outputs' shapes stand in for a batch. Keras' two containers are used
    as its own ``train_step`` uses them, before their first ``update_state``.
    """
    def one(shape, dtype):
        return tf.zeros([1] + [d or 1 for d in shape[1:]], dtype)

    y_pred = [one(o.shape, o.dtype) for o in model.outputs]
    y_pred = y_pred[0] if len(y_pred) == 1 else y_pred
    y_true = tf.nest.map_structure(lambda s: one(s.shape, s.dtype), label_spec)
    with model.distribute_strategy.scope():
        losses, metrics = model.compiled_loss, model.compiled_metrics
        if losses is not None and not losses._built:
            losses.build(y_pred)
        if metrics is not None and not metrics._built:
            metrics.build(y_pred, metrics._conform_to_outputs(y_pred, y_true))


def fit(ctx, model, epochs: int, callbacks: List, teacher=None,
        mix=None, state: Sequence[tf.Variable] = ()) -> Dict[str, List[float]]:
    """``model.fit`` with resuming, logs, best-model checkpoint and NaN guard.

    ``state``: variables outside the model that a resumed fit needs back, as
    they were at the end of the epoch it resumes after (global pruning's
    masks, stage counter and rewind snapshot), backed up with SRIP's.
    ``teacher``: a float model whose logits are appended to every label row
    (``[label, teacher logits...]``), the targets ``mntk.losses.Distillation``
    expects. ``mix``: this fit's batch mixing ('none', 'mixup', 'cutmix';
    None: ``data.mix``). Returns the per-epoch history of the whole stage (resumed epochs
    included).
    """
    config = ctx.config
    # one backup folder for every worker: BackupAndRestore writes the chief's
    # checkpoint and worker-private temporaries there, and all workers restore
    # from the chief's, so they resume at the same epoch.
    backup_dir = os.path.join(ctx.stage_dir, "backup")
    try:
        first = saved_epoch(backup_dir)
    except Exception as e:
        raise backup_error(backup_dir, e) from None
    if teacher is not None and soft_labels(config):
        raise RecipeError("distillation needs integer labels; turn off data.mix and "
                          "data.one_hot for the distilled stage.")
    train_ds = training_data(ctx, first, epochs, teacher, mix)
    validation = validation_data(config, ctx.data, teacher)
    n_outputs = len(model.outputs)
    if n_outputs > 1:  # multi-exit models: the same label for every output
        train_ds = train_ds.map(lambda x, y: (x, (y,) * n_outputs))
        validation = validation.map(lambda x, y: (x, (y,) * n_outputs))
    history_csv = os.path.join(ctx.writable_dir(), "history.csv")
    # the rows of the epochs the backup holds: a run killed after an epoch's
    # row was written but before its backup resumes at that epoch, which
    # writes its row again
    best_val_loss = math.inf
    if first > 0:   # (a fresh fit overwrites the file)
        keep_history_rows(history_csv, first)
        best_val_loss = min(read_history(history_csv).get("val_loss", []) or [math.inf])
    state = [v for r in regularizers.orthogonality_regularizers(model)
             for v in getattr(r, "variables", [])] + list(state)
    stage = os.path.basename(ctx.stage_dir).split("_", 1)[-1]
    guard = DivergenceGuard(stage, validation_batch(ctx.data), hint=(
        f"lower {stage}.learning_rate or check the input data; the last good epoch is kept "
        f"in {os.path.relpath(backup_dir, ctx.workdir)}, and a rerun resumes from it"))
    rate = getattr(model.optimizer, "_learning_rate", None)
    if isinstance(rate, schedules.CosineCycles):
        # each cycle starts from a fresh optimizer state, as the entries' runs did
        callbacks = list(callbacks) + [schedules.ResetOptimizerState(rate.cycle_steps)]
    # The guard comes first: it must fire before a diverged epoch is backed up.
    # The epoch's files (history row, best weights) are written before its
    # backup, so a run killed between the two redoes that epoch and writes
    # them again, rather than resuming after an epoch whose files are missing.
    all_callbacks = [guard] + list(callbacks) + [
        EpochSeededRandomness(int(config.seed)),
        TechniqueLogger(),
        cost.CostLogger(task=config.cost.task, freebie=bool(config.cost.freebie)),
        SpaceGuard(ctx.writable_dir(), ctx.workdir),   # before any of the epoch's files
        keras.callbacks.CSVLogger(history_csv, append=first > 0),
        keras.callbacks.ModelCheckpoint(
            os.path.join(ctx.writable_dir(), "best.weights.h5"),
            monitor="val_loss", mode="min", save_best_only=True, save_weights_only=True,
            # a resumed fit remembers the best epoch before the kill
            initial_value_threshold=best_val_loss if math.isfinite(best_val_loss) else None),
        keras.callbacks.TensorBoard(ctx.writable_dir("tensorboard"), profile_batch=0),
        StateBackup(state, backup_dir + "_state", chief=is_chief(),
                    worker=os.path.basename(os.path.dirname(ctx.writable_dir("x"))),
                    resume_epoch=first),
        CheckedBackupAndRestore(backup_dir),
        keras.callbacks.TerminateOnNaN(),
    ] + list(ctx.extra_callbacks) + kill_at_callbacks(stage)  # test-only, last
    # set per fit, after the stage's compile: Keras reads it when it builds the step
    model.run_eagerly = bool(config.run_eagerly)
    build_compiled_metrics(model, train_ds.element_spec[1])
    model.fit(train_ds, epochs=epochs, steps_per_epoch=ctx.steps(), validation_data=validation,
              callbacks=all_callbacks, verbose=int(config.verbose))
    history = read_history(history_csv)
    losses = history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses):
        bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        raise RecipeError(
            f"training loss became NaN/inf at epoch {bad} (learning rate "
            f"{config.train.learning_rate}); lower train.learning_rate or check the input data.")
    return history


def keep_history_rows(path: str, rows: int) -> None:
    """Cut a CSVLogger file to its header and first ``rows`` rows (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    if len(lines) > rows + 1:
        with open(path + ".tmp", "w") as f:
            f.writelines(lines[:rows + 1] if rows else [])
        os.replace(path + ".tmp", path)


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
