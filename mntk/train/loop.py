"""The run loop: config -> data -> model -> stages -> work directory.

``run(config, workdir)`` resolves the recipe against ``mntk.train.schema``,
executes its ``stages`` in order (``mntk.train.stages``) inside the
``tf.distribute`` strategy the config names, and writes::

    WORKDIR/stages/<k>_<stage>/   model.keras, history.csv, tensorboard/,
                                  summary.json (the stage's StageSummary)
    WORKDIR/model.keras           the last stage's model (model.h5 for a QAT model)
    WORKDIR/cost.json             mntk.cost report of the last counted model
    WORKDIR/*.tflite, calibration.json, staged_tflite/   from export stages
    WORKDIR/summary.json          the RunSummary: every stage, merged

Resuming: a stage whose ``summary.json`` exists is skipped (its model is
loaded); inside a stage, ``BackupAndRestore`` keeps the last finished epoch
(``mntk.train.fit``).
"""
import os
import time
from typing import List, Optional, Tuple

import tensorflow as tf

from mntk.compat import keras
from mntk.train import schema
from mntk.train.context import RunContext, is_chief, load_data, make_strategy, write_json
from mntk.train.callbacks import first_bad_weight, remove_backups
from mntk.train.disk import MARGIN, NoSpaceError, check_space, is_no_space, no_space_error, \
    variable_bytes
from mntk.train.errors import DivergedError, RecipeError
from mntk.train.saving import copy_final_model, load_stage_model, save_final_model, \
    save_stage_model
from mntk.train.stages import HANDS_ON, STAGES
from mntk.train.summary import RunSummary, read_stage
from mntk.train.workdir import WorkdirLock, record_config


def run(config, workdir: str, stages: Optional[List[str]] = None,
        extra_callbacks: Optional[List[keras.callbacks.Callback]] = None,
        force: bool = False, restart_from: Optional[str] = None) -> RunSummary:
    """Run a recipe's stages into ``workdir`` and return the run's summary.

    Args:
      config: an ``ml_collections.ConfigDict`` from a recipe's ``get_config()``
        (resolved here with ``mntk.train.schema.resolve``).
      workdir: output directory (created; reused to resume).
      stages: run only these stage names (default: ``config.stages``).
      extra_callbacks: appended to every ``fit`` (tests use this to kill a run).
      force: go on in a work directory that was run with another config.
      restart_from: remove this stage's folder and the later ones first.

    Raises:
      ConfigError: an unknown or invalid recipe field.
      DivergedError: a NaN/Inf loss, metric, weight or output (the stage's
        backup keeps the last good epoch).
      RecipeError: a stage the recipe cannot run (unknown stage, ...), a work
        directory in use by another run or run with another config.
    """
    config = schema.resolve(config)
    for where, names in (("config.stages", config.stages), ("--stages", stages or [])):
        unknown = [s for s in names if s not in STAGES]
        if unknown:
            raise RecipeError(f"Unknown stage(s) {unknown} in {where}; known stages: "
                              f"{', '.join(STAGES)}.")
    plan = _plan(list(config.stages), stages)
    keras.utils.set_random_seed(int(config.seed))
    # Dropout & co. draw from tf.random.Generator variables instead of stateful
    # ops, so their RNG state is checkpointed and a resumed run continues the
    # same random stream.
    keras.backend.experimental.enable_tf_random_generator()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir):
        try:
            record_config(workdir, config, list(config.stages), force=force,
                          restart_from=restart_from)
            return _run_stages(config, workdir, plan, extra_callbacks)
        except NoSpaceError:
            raise
        except Exception as e:
            if is_no_space(e):   # a write failed on a full disk: one line, resumable
                raise no_space_error(workdir, e) from None
            raise


def stage_seed(seed: int, k: int) -> int:
    """The random seed stage ``k`` starts from (stage 0: the recipe's seed)."""
    return seed + 1000003 * k


def _plan(full: List[str], chosen: Optional[List[str]]) -> List[Tuple[int, str]]:
    """(k, name) of the stages to run: ``k`` is the stage's place in
    ``config.stages``, so ``--stages=export`` is ``stages/1_export`` of a
    ``train, export`` recipe and continues from ``stages/0_train``."""
    if not chosen:
        return list(enumerate(full))
    plan, start = [], 0
    for name in chosen:
        if name not in full[start:]:
            raise RecipeError(f"--stages: {name!r} is not in config.stages "
                              f"({', '.join(full)}) in that order")
        k = full.index(name, start)
        plan.append((k, name))
        start = k + 1
    return plan


#: stages that can start without an earlier stage's model (from ``init_from``)
STARTS_FROM_INIT = ("qat8",)


def _earlier_model(ctx, k: int, name: str):
    """The model of the latest finished stage before stage ``k`` (None for a
    stage that starts from ``init_from`` when there is none)."""
    for j in range(k - 1, -1, -1):
        for entry in sorted(os.listdir(os.path.join(ctx.workdir, "stages"))):
            if entry.startswith(f"{j}_"):
                ctx.stage_dir = os.path.join(ctx.workdir, "stages", entry)
                model = load_stage_model(ctx)
                if model is not None:
                    return model
    if name in STARTS_FROM_INIT:
        return None     # the stage loads init_from (or says how to set it)
    raise RecipeError(f"stage {name!r} needs the model of an earlier stage, and this work "
                      f"directory has none; run the stages before it first (drop --stages, "
                      f"or --stages=train,{name})")


def _run_stages(config, workdir, plan, extra_callbacks) -> RunSummary:
    ctx = RunContext(config=config, workdir=workdir,
                     strategy=make_strategy(config.strategy, config.tpu),
                     extra_callbacks=list(extra_callbacks or []))
    ctx.data = load_data(config)
    started = time.time()
    summary = RunSummary(recipe=config.name, dataset=config.data.name)
    os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
    for k, name in plan:
        done = os.path.join(workdir, "stages", f"{k}_{name}", "summary.json")
        if ctx.model is None and name != "train" and not os.path.exists(done):
            ctx.model = _earlier_model(ctx, k, name)
        ctx.stage_dir = os.path.dirname(done)
        if os.path.exists(done):
            stage_summary = read_stage(done)
            # loaded only if a stage that still has to run needs it
            # (_earlier_model above): a finished run's rerun loads nothing
            ctx.model = None
            print(f"mntk: stage {k} '{name}' already done, resuming after it", flush=True)
        else:
            print(f"mntk: stage {k} '{name}'", flush=True)
            os.makedirs(ctx.stage_dir, exist_ok=True)
            # each stage draws its random numbers (new layers' initial weights)
            # from its own seed, not from where the stages before it left the
            # stream: a run resumed at this stage, which skipped them, draws
            # the same numbers as an uninterrupted one
            keras.utils.set_random_seed(stage_seed(int(config.seed), k))
            stage_started, stage_cpu = time.time(), time.process_time()
            stage_summary = STAGES[name](ctx)
            stage_summary.name = name
            bad = first_bad_weight(ctx.model) if ctx.model is not None else None
            if bad is not None:
                raise DivergedError(f"stage {name!r} ended with NaN/Inf in weight {bad}; "
                                    f"lower {name}.learning_rate or check the input data")
            check_space(workdir, 2 * variable_bytes(ctx.model) + MARGIN if ctx.model is not None
                        else MARGIN, f"saving stage {name!r}", workdir)
            save_stage_model(ctx, unchanged=name in HANDS_ON)
            write_json(done, stage_summary.to_dict())
            if is_chief():
                remove_backups(ctx.stage_dir)
            print(f"mntk: stage {k} '{name}' done in {time.time() - stage_started:.1f} s "
                  f"({time.process_time() - stage_cpu:.1f} s CPU)", flush=True)
        summary.merge(stage_summary)
    summary.seconds = round(time.time() - started, 2)
    if ctx.model is None:   # every stage was done already: the file is there
        copy_final_model(workdir, [k for k, _ in plan])
    else:
        save_final_model(ctx)
    write_json(os.path.join(workdir, "summary.json"), summary.to_dict())
    return summary
