"""Optimizers and learning-rate schedules of the recipe runner.

``make_optimizer(cfg, steps_per_epoch, replicas)`` reads the optimizer fields
of ``config.train`` (or a stage's merged copy, ``schema.section_train_config``):
SGD (momentum, Nesterov), Adam or AdamW; constant, cosine (Loshchilov & Hutter
2017, without restarts) or cosine with warm restarts whose cycles double in
length (SGDR, t_mul=2); ``cosine_cycles``: ``restart_cycles`` equal cosine
cycles down to ``min_learning_rate``, each with a fresh optimizer state (the
KAIST and OSI-AI runs; ``mntk.schedules.CosineCycles``, reset by ``fit``);
``step``: the rate switches to ``step_learning_rates[i]`` at
``step_epochs[i]`` (the TTQ code). With ``scale_with_replicas`` the learning rate is
multiplied by the replica count (linear scaling, Goyal et al. 2017), matching
the global batch.
"""
from mntk import schedules
from mntk.compat import keras
from mntk.train.errors import RecipeError
from mntk.train.schema import OPTIMIZERS, SCHEDULES


def make_schedule(cfg, steps_per_epoch: int, replicas: int = 1):
    """The learning rate (a float or a Keras schedule) over ``cfg.epochs`` epochs."""
    lr = float(cfg.learning_rate) * (replicas if cfg.scale_with_replicas else 1)
    total = max(1, int(cfg.epochs) * steps_per_epoch)
    scale = lr / float(cfg.learning_rate)
    floor = float(cfg.min_learning_rate or 0.0) * scale
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total, alpha=floor / lr)
    if cfg.schedule == "cosine_cycles":
        cycles = int(cfg.restart_cycles)
        if int(cfg.epochs) % cycles:
            raise RecipeError(f"schedule 'cosine_cycles': epochs={cfg.epochs} is not a "
                              f"multiple of restart_cycles={cycles}; the cycles are equal.")
        return schedules.CosineCycles(lr, total // cycles, floor,
                                      steps_per_epoch=steps_per_epoch)
    if cfg.schedule == "step":
        return schedules.step_decay(lr, cfg.step_epochs or (),
                                    [float(r) * scale for r in cfg.step_learning_rates or ()],
                                    steps_per_epoch)
    if cfg.schedule == "cosine_restarts":
        # first cycle length chosen so `restart_cycles` doubling cycles fill the run:
        # first * (1 + 2 + ... + 2^(c-1)) = first * (2^c - 1) = total
        first = max(1, total // (2 ** int(cfg.restart_cycles) - 1))
        return keras.optimizers.schedules.CosineDecayRestarts(lr, first, t_mul=2.0)
    raise RecipeError(f"train.schedule={cfg.schedule!r} is unknown; use one of "
                      f"{', '.join(SCHEDULES)}.")


def make_optimizer(cfg, steps_per_epoch: int, replicas: int = 1, ema_decay: float = 0.0,
                   bits=None):
    """SGD/Adam/AdamW with ``make_schedule``'s learning rate.

    ``ema_decay``: keep an exponential moving average of the weights, put into
    the model when ``fit`` ends (Keras ``use_ema``: a <- d a + (1 - d) w each
    step). ``bits``: ``mntk.quantization.BitWidthAdam``'s options
    (``bits_learning_rate`` per replica, scaled like the rate;
    ``bits_tenths``; ``steps_per_epoch``) for Adam.
    """
    schedule = make_schedule(cfg, steps_per_epoch, replicas)
    wd = float(cfg.weight_decay) or None
    extra = {"use_ema": True, "ema_momentum": float(ema_decay)} if ema_decay else {}
    if bits is not None:
        if cfg.optimizer != "adam":
            raise RecipeError(f"the bit widths' own rate and tenths need optimizer 'adam' "
                              f"(mntk.quantization.BitWidthAdam), got {cfg.optimizer!r}; set "
                              "the stage's optimizer='adam'.")
        from mntk.quantization import BitWidthAdam
        scale = (replicas if cfg.scale_with_replicas else 1)
        return BitWidthAdam(schedule, weight_decay=wd, **extra, **dict(
            bits, bits_learning_rate=float(bits["bits_learning_rate"]) * scale))
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=float(cfg.momentum),
                                    nesterov=bool(cfg.nesterov), weight_decay=wd, **extra)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=wd, **extra)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=float(cfg.weight_decay), **extra)
    raise RecipeError(f"train.optimizer={cfg.optimizer!r} is unknown; use one of "
                      f"{', '.join(OPTIMIZERS)}.")
