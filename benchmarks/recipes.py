"""Train-step price of each recipe's techniques: the recipe's model with its
techniques vs the same model (same seed) trained plainly, on CPU.

Ratios are timed in interleaved, rotating blocks on one fixed batch in the
same run (``benchmarks.tricks._train_step_seconds``), so machine load shifts
both sides alike. Batch 16 and a handful of steps keep the whole module
near two minutes on 2 cores; the ratio, not the absolute time, is the figure.

Texas-EIC's EfficientNet-B0 is timed on 64x64 inputs (its QAT graph at 224
takes minutes to trace on 2 cores); the ratio is what the technique costs.
"""
from mntk.compat import keras
import mntk
from benchmarks.tricks import _data, _train_step_seconds

BLOCKS, STEPS = 3, 2


def _ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _pair(build):
    keras.backend.clear_session()
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        models.append(build())
    return models


def _ratio(name, technique, plain, priced, num_classes, **extra):
    x, y = _data(plain, num_classes)
    (base, base_min), (cost, cost_min) = _train_step_seconds(
        [plain, priced], x, y, BLOCKS, STEPS)
    return {"name": f"recipe_step_ratio_{name}", "value": cost / base, "unit": "x",
            "min_ratio": cost_min / base_min, "plain_step_ms": 1e3 * base,
            "step_ms": 1e3 * cost, "technique": technique, "batch": 16, **extra}


def bench_kaist_cifar100():
    """KAIST net: SRIP in the entry's form (mean, fan-in side, fresh vector) on all
    1x1 convs + coupled L2 + adaptive smoothing; then global pruning (masks
    re-applied after each step)."""
    build = lambda: mntk.models.kaist_micronet(num_classes=100)  # noqa: E731
    plain, dense = _pair(build)
    plain.compile(keras.optimizers.SGD(0.1), _ce())
    mntk.regularizers.apply_srip(dense, 0.7, layers="pointwise", squared=True,
                                 reduction="mean", gram="fan_in", vector="fresh")
    mntk.regularizers.apply_l2(dense, 1e-5)
    smoothing = mntk.losses.AdaptiveLabelSmoothing(dense.get_layer("logits"), epsilon=0.3)
    smoothing.refresh_similarity()
    dense.compile(keras.optimizers.SGD(0.1), smoothing)
    out = [_ratio("kaist_cifar100_train", "srip(kaist form)+l2+adaptive_smoothing", plain,
                  dense, 100)]
    pruned = build()
    gp = mntk.global_pruning.GlobalPruning(pruned)
    gp.prune(0.6)
    pruned.compile(keras.optimizers.SGD(0.1), _ce())
    x, y = _data(plain, 100)
    (base, _), (step, _) = _train_step_seconds([plain, pruned], x, y, BLOCKS, STEPS)
    import time
    gp.apply()
    start = time.perf_counter()
    for _ in range(BLOCKS * STEPS):
        gp.apply()
    masks = (time.perf_counter() - start) / (BLOCKS * STEPS)
    out.append({"name": "recipe_step_ratio_kaist_cifar100_prune",
                "value": (step + masks) / base, "unit": "x", "plain_step_ms": 1e3 * base,
                "step_ms": 1e3 * (step + masks), "mask_ms": 1e3 * masks,
                "technique": "global pruning (masks after every step)", "batch": 16})
    return out


def bench_osi_cifar100():
    """OSI: training the entry's exit head on the frozen backbone vs a plain
    backbone step (the entry's 63x63 network)."""
    build = lambda: mntk.models.osi_efficientnet(num_classes=100)  # noqa: E731
    plain, backbone = _pair(build)
    plain.compile(keras.optimizers.SGD(0.13, momentum=0.9), _ce())
    multi = mntk.early_exit.add_exits(backbone, at=["block4_out"],
                                      head=mntk.models.osi_exit_head())
    mntk.early_exit.compile_exits(multi, keras.optimizers.SGD(0.13, momentum=0.9),
                                  freeze_backbone=True, bn_trainable=True)
    x, y = _data(plain, 100)
    import tensorflow as tf
    (base, _), = _train_step_seconds([plain], x, y, BLOCKS, STEPS)
    iterator = iter(tf.data.Dataset.from_tensors((x, (y, y))).repeat())
    step = multi.make_train_function()
    for _ in range(3):
        step(iterator)
    import time
    start = time.perf_counter()
    for _ in range(BLOCKS * STEPS):
        logs = step(iterator)
    float(logs["loss"])
    head = (time.perf_counter() - start) / (BLOCKS * STEPS)
    return [{"name": "recipe_step_ratio_osi_cifar100_exit_head", "value": head / base,
             "unit": "x", "plain_step_ms": 1e3 * base, "step_ms": 1e3 * head,
             "technique": "exit head, frozen backbone, BN statistics updating "
                          "(not interleaved)", "batch": 16}]


def bench_ttq_cifar10():
    """Pre-activation ResNet-20: TTQ step (every kernel but the stem, FC included)
    vs the float step, both with coupled L2 2e-4 on the kernels."""
    plain, float_model = _pair(lambda: mntk.models.get("preact_resnet20"))
    mntk.regularizers.apply_l2(plain, 2e-4, on="kernels")
    plain.compile(keras.optimizers.SGD(0.1, momentum=0.9), _ce())
    ternary = mntk.quantization.quantize(float_model, scheme=mntk.quantization.TernaryScheme(),
                                         skip=["stem_conv"])
    mntk.regularizers.apply_l2(ternary, 2e-4, on="kernels")
    ternary.compile(keras.optimizers.SGD(0.1, momentum=0.9), _ce())
    return [_ratio("ttq_cifar10_preact_resnet20", "ttq", plain, ternary, 10)]


def bench_ternary_cifar100():
    """KAIST net: TTQ fine-tuning step vs the float step."""
    plain, float_model = _pair(lambda: mntk.models.kaist_micronet(num_classes=100))
    plain.compile(keras.optimizers.SGD(0.01, momentum=0.9), _ce())
    ternary = mntk.quantization.quantize(float_model, scheme=mntk.quantization.TernaryScheme())
    ternary.compile(keras.optimizers.SGD(0.01, momentum=0.9), _ce())
    return [_ratio("ternary_cifar100", "ttq", plain, ternary, 100)]


def bench_texas_eic_imagenet():
    """EfficientNet-B0 (64x64): learned range+precision QAT with the cost target vs float."""
    plain, float_model = _pair(lambda: mntk.models.efficientnet_b0(input_shape=(64, 64, 3)))
    plain.compile(keras.optimizers.Adam(1e-4), _ce())
    learned = mntk.quantization.quantize(
        float_model, scheme=mntk.quantization.LearnedPrecisionScheme())
    learned.add_loss(mntk.losses.CostTarget(learned, target=2.94))
    learned.compile(keras.optimizers.Adam(1e-4), _ce())
    return [_ratio("texas_eic_efficientnet_b0_64x64", "learned precision+cost target",
                   plain, learned, 1000)]
