"""Stage ``prune_exits``: the exit heads of the ``early_exit`` stage's
multi-exit model pruned by global magnitude, the backbone's zeros held, then
the exits evaluated again (OSI-AI's last step, reproduce.sh: the exit head
pruned to 50% in 5 rounds of 600 epochs on the pruned, frozen backbone; the
exit rate at 0.85 falls from 32.17% to 29.29%, the score from 0.005977 to
0.005798).

The multi-exit model is the latest earlier ``early_exit`` (or
``prune_exits``) stage's ``multi.keras``, read from disk so a resumed run
starts from the same one. ``prune_exits.layers`` (default: every exit head
layer, ``mntk.early_exit.exit_head_layers``) are ranked together at each of
``prune_exits.rates`` (``mntk.global_pruning.GlobalPruning(...,
hold_zeros=True)``); every other kernel keeps its zeros. The heads train as
in the ``early_exit`` stage (its loss, frozen backbone, BN updates, mixing and
smoothing) with this stage's optimizer fields. Figures: the exit figures of
``early_exit`` (thresholds, exit rates, staged TFLite) and ``pruning``: the
heads' sparsity and the cost at the new exit rates. ``ctx.model`` stays the
backbone.
"""
import os

from mntk import early_exit, global_pruning
from mntk.serialization import load_model
from mntk.train.errors import RecipeError
from mntk.train.evaluation import cost_summary
from mntk.train.fit import fit
from mntk.train.schema import section_train_config
from mntk.train.stages.early_exit import compile_head_training, exit_figures, exit_mix
from mntk.train.stages.prune import global_stages
from mntk.train.summary import PruningFigures, StageSummary

SOURCES = ("early_exit", "prune_exits")


def trained_exits(ctx):
    """The multi-exit model of the latest earlier stage that saved one."""
    stages_dir = os.path.dirname(ctx.stage_dir)
    here = int(os.path.basename(ctx.stage_dir).split("_", 1)[0])
    for k in range(here - 1, -1, -1):
        for source in SOURCES:
            path = os.path.join(stages_dir, f"{k}_{source}", "multi.keras")
            if os.path.exists(path):
                with ctx.strategy.scope():
                    return load_model(path, compile=False)
    raise RecipeError("stage 'prune_exits' prunes the exit heads an 'early_exit' stage "
                      "trained; put 'early_exit' before it in config.stages.")


def prune_exits_stage(ctx) -> StageSummary:
    config, cfg = ctx.config, ctx.config.prune_exits
    stage_cfg = section_train_config(config, "prune_exits")
    epochs = int(stage_cfg.epochs)
    stages = global_stages(cfg.rates, epochs, "prune_exits")
    multi = trained_exits(ctx)
    layers = list(cfg.layers) or early_exit.exit_head_layers(multi)
    with ctx.strategy.scope():
        gp = global_pruning.GlobalPruning(
            multi, stages=stages, layers=layers, hold_zeros=True,
            normalize=None if cfg.normalize == "none" else cfg.normalize,
            rewind=None if cfg.rewind == "none" else cfg.rewind,
            monitor=f"val_{multi.output_names[0]}_accuracy")
        compile_head_training(ctx, multi, stage_cfg)
    # the masks (held ones too) and rewind state go into the resume backup
    history = fit(ctx, multi, epochs, [gp], mix=exit_mix(config), state=gp.variables)
    figures = exit_figures(ctx, multi)
    sparsity = gp.sparsity()
    return StageSummary(early_exit=figures, pruning=PruningFigures(
        target=float(cfg.rates[-1]), sparsity={k: float(v) for k, v in sparsity.items()},
        accuracy=figures.accuracy, history=history,
        cost=cost_summary(ctx, multi, exit_rates=figures.exit_rates)))
