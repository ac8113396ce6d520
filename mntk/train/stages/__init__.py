"""The stages a recipe runs, one module each.

Each stage is a function ``stage(ctx) -> StageSummary`` over a
``mntk.train.context.RunContext``: it reads its part of the config, updates
``ctx.model`` and returns the figures of its ``summary.json``
(``mntk.train.summary``). Adding a stage: a module here, its entry in
``STAGES``, its config section in ``mntk.train.schema.FIELDS`` and, if it
reports new figures, a section in ``mntk.train.summary``.
"""
from mntk.train.stages.early_exit import early_exit_stage
from mntk.train.stages.export import export_stage
from mntk.train.stages.finetune import finetune_stage
from mntk.train.stages.prune import prune_stage
from mntk.train.stages.prune_exits import prune_exits_stage
from mntk.train.stages.qat8 import qat8_stage
from mntk.train.stages.quantize import quantize_stage
from mntk.train.stages.train import train_stage

STAGES = {
    "train": train_stage,
    "export": export_stage,
    "early_exit": early_exit_stage,
    "prune": prune_stage,
    "prune_exits": prune_exits_stage,
    "qat8": qat8_stage,
    "quantize": quantize_stage,
    "finetune": finetune_stage,
}

#: Stages that hand ``ctx.model`` on as they got it (export writes files,
#: prune_exits trains the exit heads of its own multi-exit model): their
#: stage folder gets a copy of the file the model came from, so the final
#: model file is the same whether or not the run was resumed before them.
HANDS_ON = frozenset({"export", "prune_exits"})
