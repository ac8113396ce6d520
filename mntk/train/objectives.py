"""The loss, metrics and training tricks a recipe asks for.

- ``base_loss``: cross-entropy on integer labels, or on one-hot / mixed
  labels (``data.mix``, ``data.one_hot``) with optional label smoothing;
- ``attach_tricks``: SRIP (Bansal et al. 2018) on the model's kernels and
  KAIST's adaptive label smoothing, as ``config.tricks`` says;
- ``compile_model``: the optimizer of ``mntk.train.optim`` with that loss.
"""
from typing import Any, Dict, List, Tuple

from mntk import callbacks as callbacks_lib
from mntk import losses, regularizers
from mntk.compat import keras
from mntk.train.errors import RecipeError
from mntk.train.optim import make_optimizer
from mntk.wrapped import unwrap


def soft_labels(config) -> bool:
    """True when the labels are one-hot rows (mixed batches, or ``data.one_hot``)."""
    return bool(config.data.mix) or bool(config.data.one_hot)


def base_loss(config, label_smoothing=None):
    """Cross-entropy on the run's labels, smoothed by ``train.label_smoothing``
    (or ``label_smoothing``, a stage's own setting, when not None)."""
    smoothing = float(config.train.label_smoothing if label_smoothing is None
                      else label_smoothing)
    if soft_labels(config):
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    if smoothing:
        raise RecipeError("train.label_smoothing needs one-hot labels; set data.one_hot=True "
                          "or use tricks.adaptive_smoothing.")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy_metric(config):
    if soft_labels(config):
        return keras.metrics.CategoricalAccuracy(name="accuracy")
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def classifier_layer(model, config):
    """The final Dense layer named ``config.model.classifier``, or the tfmot
    pruning/QAT wrapper around it (AdaptiveLabelSmoothing unwraps it itself)."""
    name = config.model.classifier
    for layer in model.layers:
        if layer.name == name or unwrap(layer).name == name:
            return layer
    raise RecipeError(f"model {model.name!r} has no classifier layer {name!r}; set "
                      "model.classifier to the final Dense layer's name.")


def attach_tricks(model, config) -> Tuple[Dict[str, Any], Any, List]:
    """SRIP and adaptive label smoothing as ``config.tricks`` asks.

    Returns (summary of the settings, the loss, the callbacks they need).
    """
    summary: Dict[str, Any] = {}
    callbacks: List = []
    loss = base_loss(config)
    srip_cfg = config.tricks.srip
    if srip_cfg.enabled:
        srip = attach_srip(model, config)
        if srip_cfg.schedule:
            callbacks.append(callbacks_lib.CoefficientSchedule(srip_cfg.schedule, target=srip))
        summary["srip"] = dict(srip_cfg.items())
    als_cfg = config.tricks.adaptive_smoothing
    if als_cfg.enabled:
        loss = losses.AdaptiveLabelSmoothing(classifier_layer(model, config),
                                             epsilon=float(als_cfg.epsilon),
                                             from_logits=True, refresh=als_cfg.refresh)
        callbacks.append(loss.callback())
        summary["adaptive_smoothing"] = {"epsilon": float(als_cfg.epsilon),
                                         "refresh": als_cfg.refresh}
    return summary, loss, callbacks


def attach_srip(model, config):
    """``tricks.srip`` on ``model`` (``mntk.regularizers.apply_srip``); the
    regularizer is kept as ``model._mntk_srip``, so a later stage can tell
    whether the model it trains still carries it."""
    cfg = config.tricks.srip
    srip = regularizers.apply_srip(
        model, float(cfg.coefficient), layers=cfg.layers,
        power_iterations=int(cfg.power_iterations), squared=bool(cfg.squared),
        reduction=cfg.reduction, gram=cfg.gram, vector=cfg.vector)
    model._mntk_srip = srip
    return srip


def restore_train_srip(model, config, train_steps: int):
    """Attach the train stage's SRIP again to a model that lost it by being
    reloaded from disk (a run resumed between ``train`` and a stage that
    trains the same model on, the global ``prune``): ``apply_srip``'s loss is
    a training-time addition that no saved model carries. In one process the
    model still carries it and nothing is done. ``train_steps``: the training
    steps the train stage took; fresh power-iteration starts are drawn from
    the step count (``vector="fresh"``), so the resumed stage draws what the
    uninterrupted one would. (Persistent vectors start over from their
    initial values: they are not part of the saved model.)

    Returns the regularizer attached now, or None."""
    if not config.tricks.srip.enabled or "train" not in config.stages or \
            getattr(model, "_mntk_srip", None) is not None:
        return None
    srip = attach_srip(model, config)
    if getattr(srip, "fresh_step", None) is not None:
        srip.fresh_step.assign(int(train_steps))
    return srip


@keras.utils.register_keras_serializable(package="mntk")
def first_column_accuracy(y_true, y_pred):
    """Top-1 accuracy against the label in column 0 of ``y_true`` (the
    ``[label, teacher logits...]`` rows that ``mntk.losses.Distillation`` fits on)."""
    return keras.metrics.sparse_categorical_accuracy(y_true[:, :1], y_pred)


def compile_model(model, config, loss, steps_per_epoch: int, replicas: int = 1,
                  train_cfg=None, metrics=None, **optimizer_options):
    """``model.compile`` with the recipe's optimizer (``train_cfg``: a stage's
    merged optimizer fields; default ``config.train``; ``optimizer_options``:
    ``make_optimizer``'s ``ema_decay`` and ``bits``). A coupled L2 term
    (``l2``, ``l2_on``) is added to the model's losses once per model."""
    cfg = train_cfg or config.train
    if float(cfg.l2 or 0.0) > 0:
        attached = getattr(model, "_mntk_l2", None)
        wanted = (float(cfg.l2), str(cfg.l2_on))
        if attached is None:
            regularizers.apply_l2(model, wanted[0], on=wanted[1])
            model._mntk_l2 = wanted
        elif attached != wanted:
            raise RecipeError(f"model {model.name!r} already carries coupled L2 {attached}; "
                              f"a stage asked for {wanted}. Use the same l2 and l2_on.")
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch, replicas, **optimizer_options),
                  loss=loss, metrics=metrics or [accuracy_metric(config)])
