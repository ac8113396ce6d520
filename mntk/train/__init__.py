"""The recipe runner: ``mntk.train.run(config, workdir)`` (``mntk train``).

Modules, each importing only those listed before it:

- ``errors``: ``RecipeError``, ``ConfigError``;
- ``schema``: the table of recipe fields, defaults and checks (``resolve``);
- ``summary``: the ``summary.json`` schema (``RunSummary``, ``StageSummary``, ...);
- ``context``: ``RunContext``, workers and folders, atomic JSON, epoch-keyed data;
- ``optim``: optimizers and learning-rate schedules;
- ``objectives``: loss, metrics and the tricks (SRIP, adaptive smoothing);
- ``saving``: the model between stages;
- ``callbacks``: the callbacks every resumable fit adds;
- ``fit``: the resumable ``model.fit``;
- ``evaluation``: accuracy, cost and TFLite figures of a stage;
- ``stages``: one module per stage (train, early_exit, prune, prune_exits,
  qat8, quantize, finetune, export) and the ``STAGES`` registry;
- ``loop``: ``run``, which sequences the stages and resumes.

The names below are loaded on first use, so reading a summary
(``mntk.train.summary``) does not import the stages' technique modules.
"""
import importlib

_EXPORTS = {
    "run": "loop", "RecipeError": "errors", "ConfigError": "errors",
    "RunContext": "context", "make_strategy": "context", "is_chief": "context",
    "epoch_keyed_dataset": "context", "saved_epoch": "context", "write_json": "context",
    "load_data": "context", "resolve": "schema", "RunSummary": "summary",
    "StageSummary": "summary", "STAGES": "stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"mntk.train.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mntk.train' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
