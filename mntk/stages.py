"""The stages a recipe runs: train, early_exit, prune, quantize, finetune, export.

Each stage is a function ``stage(ctx) -> dict`` over a ``mntk.train.RunContext``:
it reads its part of the config, updates ``ctx.model`` and returns the figures
that go into the stage's ``summary.json``. Stages only compose mntk's public
parts; ``mntk.train.run`` sequences them and handles resuming.
"""
import functools
import os
import shutil
import weakref
from typing import Any, Dict

import numpy as np

from mntk import fitting


def load_data(config):
    """``mntk.data.load`` with the recipe's ``config.data`` fields."""
    from mntk import data as data_lib
    fields = dict(config.data)
    name = fields.pop("name")
    fields.setdefault("seed", int(config.seed))
    return data_lib.load(name, **fields)


# Top-level summary keys describe the trained float model (train + export
# stages); the later stages report under their own section key.
TOP_LEVEL = ("accuracy", "tflite", "cost", "tricks", "history")
SECTIONS = ("early_exit", "pruning", "quantization")


def merge_summary(summary: Dict[str, Any], name: str, stage: Dict[str, Any]) -> None:
    """Fold a stage's figures into the run summary (first stage wins at top level)."""
    for key in TOP_LEVEL:
        if key in stage and key not in summary:
            summary[key] = stage[key]
    for key in SECTIONS:
        if key in stage:
            summary[key] = stage[key]


def model_filename(model) -> str:
    """``model.keras``, or ``model.h5`` for tfmot QAT models (tfmot's layers
    do not load back from the .keras format)."""
    from mntk.export import is_qat_model
    return "model.h5" if is_qat_model(model) else "model.keras"


# model -> the file its last stage saved (weak keys: a new model never
# inherits a dead one's entry). The run's final model is a copy
# of that file: re-saving would read distributed variables, a collective the
# other workers of a multi-worker run (which do not save there) never join.
_SAVED = weakref.WeakKeyDictionary()


def save_model(model, directory: str) -> str:
    path = os.path.join(directory, model_filename(model))
    saved = _SAVED.get(model)
    if saved and os.path.exists(saved) and os.path.basename(saved) == os.path.basename(path):
        if os.path.abspath(saved) != os.path.abspath(path):
            shutil.copyfile(saved, path)
        return path
    model.save(path)
    _SAVED[model] = path
    return path


def save_stage_model(ctx) -> None:
    """The chief saves into the stage folder; other workers (which hold the
    same weights) into their own folder, so no two processes write one file."""
    if ctx.model is not None:
        folder = fitting._writable_dir(ctx, "")
        os.makedirs(folder, exist_ok=True)
        save_model(ctx.model, folder)


def load_stage_model(ctx, name: str):
    from mntk.serialization import load_model
    for filename in ("model.keras", "model.h5"):
        path = os.path.join(ctx.stage_dir, filename)
        if os.path.exists(path):
            with ctx.strategy.scope():
                # stages compile their own model; loading without the previous
                # stage's loss and metrics also spares their custom objects
                return load_model(path, compile=False)
    return ctx.model


# --------------------------------------------------------------------- stages

def train_stage(ctx) -> Dict[str, Any]:
    """Build (or continue) the model, add the tricks, ``fit``, evaluate."""
    config, data = ctx.config, ctx.data
    with ctx.strategy.scope():
        if ctx.model is None:
            from mntk import models
            kwargs = dict(config.model.get("kwargs", {}))
            ctx.model = models.get(config.model.name, input_shape=data.input_shape,
                                   num_classes=data.num_classes, **kwargs)
        model = ctx.model
        tricks, loss, callbacks = fitting.attach_tricks(model, config)
        fitting.compile_model(model, config, loss, steps_per_epoch=fitting.steps(ctx),
                              replicas=ctx.replicas)
    history = fitting.fit(ctx, model, config.train.epochs, callbacks)
    summary = {"accuracy": fitting.evaluate(model, data), "tricks": tricks,
               "history": history}
    summary.update(fitting.cost_summary(ctx, model))
    return summary


def early_exit_stage(ctx) -> Dict[str, Any]:
    """Exit heads on the trained model, trained with the backbone frozen (OSI),
    calibrated on the validation split, run with per-sample exit on the test
    split in Keras and as staged TFLite. ``ctx.model`` stays the backbone."""
    from mntk import cost, early_exit, export
    config, data = ctx.config, ctx.data
    cfg = config.early_exit
    # freeze_backbone flips the shared backbone layers; later stages (prune,
    # quantize) must train them again.
    trainable = [(layer, layer.trainable) for layer in ctx.model.layers]
    head = cfg.get("head", "osi")
    if head == "osi" and cfg.get("head_bn_momentum"):
        head = functools.partial(early_exit.osi_head, bn_momentum=float(cfg.head_bn_momentum))
    with ctx.strategy.scope():
        multi = early_exit.add_exits(ctx.model, at=list(cfg.at), head=head)
        loss = None
        if cfg.get("loss", "cross_entropy") == "confidence_weighted":
            from mntk import losses
            loss = [losses.ConfidenceWeighted()] * (len(multi.outputs) - 1) + [
                fitting.base_loss(config)]
        stage_cfg = fitting.section_train_config(config, "early_exit")
        early_exit.compile_exits(
            multi, fitting.make_optimizer(stage_cfg, fitting.steps(ctx), ctx.replicas),
            loss=loss, freeze_backbone=bool(cfg.get("freeze_backbone", True)))
    fitting.fit(ctx, multi, int(stage_cfg.epochs), [])
    for layer, flag in trainable:
        layer.trainable = flag
    target = {k: float(cfg.target[k]) for k in cfg.target}
    limit = int(cfg.get("max_examples", 0) or 0) or None
    x_test, y_test = data.arrays("test", limit)
    cal = early_exit.calibrate(multi, data.arrays("validation", limit),
                               criterion=cfg.get("criterion", "max_softmax"),
                               curve=True, verbose=0, **target)
    for folder in (ctx.stage_dir, ctx.workdir):
        cal.to_json(os.path.join(folder, "calibration.json"))
    runner = early_exit.EarlyExitRunner(multi, cal)
    logits, exits = runner.predict(x_test)
    final = multi.predict(x_test, verbose=0)[-1]
    rates = [float(r) for r in runner.exit_rates]
    mean = cost.estimate(multi, exit_rates=rates)
    backbone_ops = cost.estimate(ctx.model).ops
    staged_dir = os.path.join(ctx.workdir, "staged_tflite")
    export.to_tflite_staged(multi, cal, staged_dir, quantize="none", progress=False)
    staged_logits, staged_exits = export.StagedRunner(staged_dir).predict(x_test)
    multi.save(os.path.join(ctx.stage_dir, "multi.keras"))
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    final_accuracy = float(np.mean(np.argmax(final, -1) == y_test))
    return {"early_exit": {
        "at": list(cfg.at), "head": cfg.get("head", "osi"), "criterion": cal.criterion,
        "thresholds": cal.thresholds, "calibration_target": target,
        "exit_rate": float(np.mean(exits < len(multi.outputs) - 1)), "exit_rates": rates,
        "accuracy": accuracy, "final_accuracy": final_accuracy,
        "accuracy_drop": final_accuracy - accuracy,
        "mean_ops": mean.ops, "backbone_ops": backbone_ops,
        "ops_saved": 1.0 - mean.ops / backbone_ops,
        "staged_tflite": {
            "directory": os.path.relpath(staged_dir, ctx.workdir),
            "agreement": float(np.mean(np.argmax(staged_logits, -1) == np.argmax(logits, -1))),
            "same_exits": float(np.mean(staged_exits == exits))},
    }}


def prune_stage(ctx) -> Dict[str, Any]:
    """Magnitude pruning (tfmot) of the current model to ``prune.target``.

    ``ctx.model`` stays wrapped so a following ``quantize`` stage keeps the
    zeros; ``export`` strips the wrappers."""
    from mntk import pruning
    config, cfg = ctx.config, ctx.config.prune
    stage_cfg = fitting.section_train_config(config, "prune")
    n_steps = fitting.steps(ctx)
    with ctx.strategy.scope():
        model = pruning.prune(ctx.model, target=float(cfg.target),
                              schedule=cfg.get("sparsity_schedule", "polynomial"),
                              steps_per_epoch=n_steps, epochs=int(stage_cfg.epochs))
        loss = fitting.base_loss(config)
        if cfg.get("smoothing_epsilon"):
            from mntk import losses
            loss = losses.AdaptiveLabelSmoothing(
                fitting.classifier_layer(model, config),
                epsilon=float(cfg.smoothing_epsilon))
        fitting.compile_model(model, config, loss, n_steps, ctx.replicas, stage_cfg)
    extra = pruning.callbacks() + ([loss.callback()] if hasattr(loss, "callback") else [])
    history = fitting.fit(ctx, model, int(stage_cfg.epochs), extra)
    ctx.model = model
    per_layer = pruning.sparsity(model)
    summary = {"pruning": {"target": float(cfg.target), "sparsity": per_layer,
                           "accuracy": fitting.evaluate(model, ctx.data),
                           "history": history}}
    summary["pruning"].update(fitting.cost_summary(ctx, model))
    return summary


def export_stage(ctx) -> Dict[str, Any]:
    """TFLite float and int8 files, each verified against Keras with LiteRT."""
    from mntk import export
    config, data, model = ctx.config, ctx.data, ctx.model
    if any(type(l).__name__ == "PruneLowMagnitude" for l in model.layers):
        from mntk import pruning
        model = pruning.strip(model)
    out = {}
    kinds = list(config.export.get("kinds", ("float", "int8")))
    rep = data.arrays("train", int(config.export.get("representative_examples", 200)))[0]
    test = data.arrays("test", int(config.export.get("verify_examples", 0) or 0) or None)
    for kind in kinds:
        quantize = {"float": "none", "dynamic": "dynamic", "int8": "int8"}[kind]
        path = os.path.join(ctx.workdir, f"model_{kind}.tflite")
        result = export.to_tflite(model, path, quantize=quantize,
                                  representative_data=rep if kind == "int8" else None)
        check = export.verify(path, model, test)
        out[kind] = {"path": os.path.relpath(path, ctx.workdir), "bytes": result.bytes,
                     **fitting.verify_figures(check)}
    return {"tflite": out}


from mntk.stages_quantize import finetune_stage, quantize_stage  # noqa: E402

STAGES = {
    "train": train_stage,
    "export": export_stage,
    "early_exit": early_exit_stage,
    "prune": prune_stage,
    "quantize": quantize_stage,
    "finetune": finetune_stage,
}
