"""Runs of the recipe runner shared by the test modules (each made once per
session): ``all_stages(tmp_path_factory)`` runs every stage module on digits
with two steps an epoch."""
import os

_CACHE = {}

ALL_STAGES = ("train", "export", "early_exit", "prune", "quantize", "finetune", "prune_exits")


def digits_config(**overrides):
    """``recipes/digits.py`` with ``overrides`` ({"train.epochs": 3, ...})."""
    from recipes import digits
    c = digits.get_config()
    c.verbose = 0
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def all_stages_config():
    """Every stage module, one or two epochs of two steps each. Ternary
    quantization as in the demo (learned bit widths, the cost target and
    distillation cost twice the time; the slow recipe smoke tests run them).
    The steps run eagerly (``run_eagerly``): tracing them took 40% of the run;
    the recipe smoke runs and the kill chains (slow) trace them as users do."""
    import ml_collections
    c = digits_config(**{"stages": ALL_STAGES, "train.epochs": 2,
                         "train.max_steps_per_epoch": 2, "data.batch_size": 64,
                         "early_exit.epochs": 1, "prune.epochs": 1, "quantize.epochs": 1,
                         "run_eagerly": True})
    c.finetune = ml_collections.ConfigDict({"epochs": 1, "learning_rate": 1e-4})
    c.prune_exits = ml_collections.ConfigDict({"epochs": 1, "rates": (0.5,)})
    c.export.kinds = ("int8",)
    c.export.representative_examples = 32
    c.export.verify_examples = 64
    return c


def all_stages(tmp_path_factory):
    """(config, workdir, RunSummary) of the all-stages digits run."""
    if "all" not in _CACHE:
        from mntk import train
        config = all_stages_config()
        workdir = str(tmp_path_factory.mktemp("all_stages"))
        summary = train.run(config, workdir)
        _CACHE["all"] = (config, workdir, summary)
    return _CACHE["all"]


def stage_dir(workdir, k, name):
    return os.path.join(workdir, "stages", f"{k}_{name}")


def qat8_prune_config(init_from):
    """Stage ``qat8`` (8-bit QAT of the float model saved at ``init_from``,
    two epochs) then ``prune`` by global magnitude in two stages of one epoch
    (30% then 60%), the second rewinding to the weights the first started
    from; two steps an epoch on 8x8 digits, SRIP and smoothing off (the
    all-stages run has them): tests/faults_test.py kills it."""
    import ml_collections
    c = digits_config(**{"stages": ("qat8", "prune"), "init_from": str(init_from),
                         "train.max_steps_per_epoch": 2, "data.batch_size": 64,
                         "data.image_size": 8, "prune.epochs": 2,
                         "prune.smoothing_epsilon": 0.0, "tricks.srip.enabled": False,
                         "tricks.adaptive_smoothing.enabled": False})
    c.qat8 = ml_collections.ConfigDict({"epochs": 2, "learning_rate": 1e-3})
    c.prune.method = "global"
    c.prune.rates = (0.3, 0.6)
    c.prune.rewind = "stage_start"
    c.export.verify_examples = 64
    c.run_eagerly = True     # as the all-stages run: tracing costs more than the steps
    return c


def qat8_prune(tmp_path_factory):
    """(config, workdir, float model path, RunSummary) of the qat8 + global
    pruning run, uninterrupted, from a seeded 8x8 digits CNN."""
    if "qat8_prune" not in _CACHE:
        from mntk import models, train
        from mntk.compat import keras
        keras.utils.set_random_seed(0)
        base = tmp_path_factory.mktemp("qat8_prune")
        float_model = str(base / "float.keras")
        models.digits_cnn(input_shape=(8, 8, 1), num_classes=10).save(float_model)
        config = qat8_prune_config(float_model)
        workdir = str(base / "straight")
        _CACHE["qat8_prune"] = (config, workdir, float_model, train.run(config, workdir))
    return _CACHE["qat8_prune"]
