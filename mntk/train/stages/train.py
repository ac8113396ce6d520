"""Stage ``train``: build (or continue) the model, add the tricks, fit, evaluate."""
from mntk import models
from mntk.train.evaluation import cost_summary, evaluate
from mntk.train.fit import fit
from mntk.train.objectives import attach_tricks, compile_model
from mntk.train.summary import StageSummary


def train_stage(ctx) -> StageSummary:
    """Fit ``model.name`` on the recipe's data for ``train.epochs`` with SRIP and
    adaptive label smoothing as ``tricks`` says; figures: test accuracy, the
    tricks' settings, the per-epoch history and the MicroNet cost."""
    config, data = ctx.config, ctx.data
    with ctx.strategy.scope():
        if ctx.model is None and config.init_from:
            from mntk.train.stages.qat8 import initial_model
            ctx.model = initial_model(ctx)
        if ctx.model is None:
            ctx.model = models.get(config.model.name, input_shape=data.input_shape,
                                   num_classes=data.num_classes, **dict(config.model.kwargs))
        model = ctx.model
        tricks, loss, callbacks = attach_tricks(model, config)
        compile_model(model, config, loss, steps_per_epoch=ctx.steps(), replicas=ctx.replicas)
    history = fit(ctx, model, config.train.epochs, callbacks)
    return StageSummary(accuracy=evaluate(model, data), tricks=tricks, history=history,
                        cost=cost_summary(ctx, model))
