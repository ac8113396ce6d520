"""The stages a recipe runs: train, early_exit, prune, quantize, export.

Each stage is a function ``stage(ctx) -> dict`` over a ``mntk.train.RunContext``:
it reads its part of the config, updates ``ctx.model`` and returns the figures
that go into the stage's ``summary.json``. Stages only compose mntk's public
parts; ``mntk.train.run`` sequences them and handles resuming.
"""
import os
from typing import Any, Dict
from mntk import fitting


def load_data(config):
    """``mntk.data.load`` with the recipe's ``config.data`` fields."""
    from mntk import data as data_lib
    fields = dict(config.data)
    name = fields.pop("name")
    fields.setdefault("seed", int(config.seed))
    return data_lib.load(name, **fields)


def merge_summary(summary: Dict[str, Any], name: str, stage: Dict[str, Any]) -> None:
    """Fold a stage's figures into the run summary (later stages win)."""
    for key in ("accuracy", "tflite", "cost", "early_exit", "quantization", "pruning",
                "tricks", "history"):
        if key in stage:
            summary[key] = stage[key]


def save_stage_model(ctx) -> None:
    if ctx.model is not None:
        ctx.model.save(os.path.join(ctx.stage_dir, "model.keras"))


def load_stage_model(ctx, name: str):
    path = os.path.join(ctx.stage_dir, "model.keras")
    if not os.path.exists(path):
        return ctx.model
    from mntk.serialization import load_model
    with ctx.strategy.scope():
        return load_model(path)


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


def export_stage(ctx) -> Dict[str, Any]:
    """TFLite float and int8 files, each verified against Keras with LiteRT."""
    from mntk import export
    config, data, model = ctx.config, ctx.data, ctx.model
    out = {}
    kinds = list(config.export.get("kinds", ("float", "int8")))
    rep = data.x_train[: int(config.export.get("representative_examples", 200))]
    for kind in kinds:
        quantize = {"float": "none", "dynamic": "dynamic", "int8": "int8"}[kind]
        path = os.path.join(ctx.workdir, f"model_{kind}.tflite")
        result = export.to_tflite(model, path, quantize=quantize,
                                  representative_data=rep if kind == "int8" else None)
        check = export.verify(path, model, (data.x_test, data.y_test))
        out[kind] = {"path": os.path.relpath(path, ctx.workdir), "bytes": result.bytes,
                     **fitting.verify_figures(check)}
    return {"tflite": out}


STAGES = {
    "train": train_stage,
    "export": export_stage,
}
