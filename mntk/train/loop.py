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
from typing import List, Optional

import tensorflow as tf

from mntk.compat import keras
from mntk.train import schema
from mntk.train.context import RunContext, load_data, make_strategy, write_json
from mntk.train.errors import RecipeError
from mntk.train.saving import load_stage_model, save_final_model, save_stage_model
from mntk.train.stages import STAGES
from mntk.train.summary import RunSummary, read_stage


def run(config, workdir: str, stages: Optional[List[str]] = None,
        extra_callbacks: Optional[List[keras.callbacks.Callback]] = None) -> RunSummary:
    """Run a recipe's stages into ``workdir`` and return the run's summary.

    Args:
      config: an ``ml_collections.ConfigDict`` from a recipe's ``get_config()``
        (resolved here with ``mntk.train.schema.resolve``).
      workdir: output directory (created; reused to resume).
      stages: run only these stage names (default: ``config.stages``).
      extra_callbacks: appended to every ``fit`` (tests use this to kill a run).

    Raises:
      ConfigError: an unknown or invalid recipe field.
      RecipeError: a stage the recipe cannot run (unknown stage, ...).
    """
    config = schema.resolve(config)
    names = list(stages or config.stages)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise RecipeError(f"Unknown stage(s) {unknown} in config.stages; known stages: "
                          f"{', '.join(STAGES)}.")
    keras.utils.set_random_seed(int(config.seed))
    # Dropout & co. draw from tf.random.Generator variables instead of stateful
    # ops, so their RNG state is checkpointed and a resumed run continues the
    # same random stream.
    keras.backend.experimental.enable_tf_random_generator()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    os.makedirs(workdir, exist_ok=True)
    ctx = RunContext(config=config, workdir=workdir,
                     strategy=make_strategy(config.strategy, config.tpu),
                     extra_callbacks=list(extra_callbacks or []))
    ctx.data = load_data(config)
    started = time.time()
    summary = RunSummary(recipe=config.name, dataset=config.data.name)
    for k, name in enumerate(names):
        ctx.stage_dir = os.path.join(workdir, "stages", f"{k}_{name}")
        done = os.path.join(ctx.stage_dir, "summary.json")
        if os.path.exists(done):
            stage_summary = read_stage(done)
            ctx.model = load_stage_model(ctx)
            print(f"mntk: stage {k} '{name}' already done, resuming after it", flush=True)
        else:
            print(f"mntk: stage {k} '{name}'", flush=True)
            os.makedirs(ctx.stage_dir, exist_ok=True)
            stage_started, stage_cpu = time.time(), time.process_time()
            stage_summary = STAGES[name](ctx)
            stage_summary.name = name
            save_stage_model(ctx)
            write_json(done, stage_summary.to_dict())
            print(f"mntk: stage {k} '{name}' done in {time.time() - stage_started:.1f} s "
                  f"({time.process_time() - stage_cpu:.1f} s CPU)", flush=True)
        summary.merge(stage_summary)
    summary.seconds = round(time.time() - started, 2)
    save_final_model(ctx)
    write_json(os.path.join(workdir, "summary.json"), summary.to_dict())
    return summary
