"""Saving and loading the model between stages.

QAT models are saved as ``model.h5`` (tfmot's quantize wrappers do not load
back from the ``.keras`` format), every other model as ``model.keras``.
"""
import os
import shutil
import weakref

from mntk.serialization import load_model
from mntk.wrapped import is_quantized
from mntk.train.context import is_chief


def model_filename(model) -> str:
    """``model.keras``, or ``model.h5`` for tfmot QAT models."""
    return "model.h5" if is_quantized(model) else "model.keras"


# model -> the file its latest stage saved (weak keys: a new model never
# inherits a dead one's entry). The run's final model is a copy of that file:
# re-saving would read distributed variables, a collective the other workers
# of a multi-worker run (which do not save there) never join. Stage folders
# are always saved afresh: a stage may have trained the model in place (the
# finetune stage does), so an earlier stage's file is no copy of it.
_SAVED = weakref.WeakKeyDictionary()


def save_model(model, directory: str) -> str:
    path = os.path.join(directory, model_filename(model))
    model.save(path)
    _SAVED[model] = path
    return path


def save_stage_model(ctx, unchanged: bool = False) -> None:
    """The chief saves into the stage folder; other workers (which hold the
    same weights) into their own folder, so no two processes write one file.
    ``unchanged``: the stage did not touch ``ctx.model``; the file it was
    saved to or loaded from is copied (a model loaded without its optimizer,
    as a resumed run loads it, would otherwise be saved without it)."""
    if ctx.model is None:
        return
    folder = ctx.writable_dir()
    os.makedirs(folder, exist_ok=True)
    source = _SAVED.get(ctx.model)
    if unchanged and source and os.path.exists(source):
        path = os.path.join(folder, os.path.basename(source))
        shutil.copyfile(source, path)
        _SAVED[ctx.model] = path
    else:
        save_model(ctx.model, folder)


def save_final_model(ctx) -> None:
    """The top-level model file: a copy of the last stage's."""
    if ctx.model is None or not is_chief():
        return
    path = os.path.join(ctx.workdir, model_filename(ctx.model))
    saved = _SAVED.get(ctx.model)
    if saved and os.path.exists(saved) and os.path.basename(saved) == os.path.basename(path):
        shutil.copyfile(saved, path)
    else:
        save_model(ctx.model, ctx.workdir)


def copy_final_model(workdir, stage_numbers) -> None:
    """The top-level model file when no stage ran in this process: a copy of
    the file of the last of ``stage_numbers`` that saved a model."""
    if not is_chief():
        return
    stages = os.path.join(workdir, "stages")
    for k in reversed(stage_numbers):
        for entry in sorted(os.listdir(stages)):
            for filename in ("model.keras", "model.h5"):
                path = os.path.join(stages, entry, filename)
                if entry.startswith(f"{k}_") and os.path.exists(path):
                    shutil.copyfile(path, os.path.join(workdir, filename))
                    return


def load_stage_model(ctx):
    """The model a finished stage saved (or ``ctx.model`` if it saved none)."""
    for filename in ("model.keras", "model.h5"):
        path = os.path.join(ctx.stage_dir, filename)
        if os.path.exists(path):
            with ctx.strategy.scope():
                # stages compile their own model; loading without the previous
                # stage's loss and metrics also spares their custom objects
                model = load_model(path, compile=False)
            _SAVED[model] = path
            return model
    return ctx.model
