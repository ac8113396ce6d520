"""Train-step cost of the regularization tricks (targets: SRIP <= 1.15x,
adaptive label smoothing <= 1.05x of the plain step).

Each ratio compares models built from the same seed and timed in interleaved,
rotating blocks on the same fixed batch in the same run, so machine load
shifts all sides alike; `value` is the ratio of median block times
(`min_ratio`, of the fastest blocks, is reported too). On a CPU shared with
other jobs, single ratios swing by +-10%: compare several runs.
"""
import time

import numpy as np

from mntk.compat import keras
import mntk

BATCH = 16


def _train_step_seconds(models, x, y, blocks, steps):
    """Seconds per train step of each model: (median, min) over interleaved
    blocks whose order rotates, so no model always runs first. Calls the compiled train function on a dataset iterator: no per-call
    data-adapter overhead of train_on_batch."""
    import tensorflow as tf
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    functions = [model.make_train_function() for model in models]
    for function in functions:
        for _ in range(3):  # trace, then warm caches and thread pools
            function(iterator)
    times = [[] for _ in models]
    for block in range(blocks):
        for offset in range(len(models)):
            i = (block + offset) % len(models)
            start = time.perf_counter()
            for _ in range(steps):
                logs = functions[i](iterator)
            float(logs["loss"])  # wait for the last step
            times[i].append((time.perf_counter() - start) / steps)
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def _data(model, num_classes, seed=0):
    rng = np.random.RandomState(seed)
    shape = (BATCH,) + tuple(model.input_shape[1:])
    return rng.randn(*shape).astype("float32"), rng.randint(0, num_classes, BATCH)


def _step_ratios(name, build, num_classes, blocks=10, steps=3):
    """Plain, SRIP (all 1x1 convs) and adaptive smoothing (epoch, step) variants
    of one architecture, same seed, timed interleaved on one batch."""
    keras.backend.clear_session()
    models = []
    for _ in range(4):
        keras.utils.set_random_seed(0)
        models.append(build())
    plain, regularized, epoch_model, step_model = models
    srip = mntk.regularizers.apply_srip(regularized, 1e-2, layers="pointwise")
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for model in (plain, regularized):
        model.compile(keras.optimizers.SGD(0.01), cross_entropy)
    for model, refresh in ((epoch_model, "epoch"), (step_model, "step")):
        loss = mntk.losses.AdaptiveLabelSmoothing(model.get_layer("logits"), refresh=refresh)
        loss.refresh_similarity()  # what the epoch callback does, outside the step
        model.compile(keras.optimizers.SGD(0.01), loss)
    x, y = _data(plain, num_classes)
    (base, base_min), *others = _train_step_seconds(models, x, y, blocks, steps)
    (srip_s, srip_min), (epoch_s, epoch_min), (step_s, step_min) = others
    common = {"unit": "x", "plain_step_ms": 1e3 * base, "batch": BATCH}
    return [
        {"name": f"srip_step_ratio_{name}", "value": srip_s / base, "target": "<= 1.15",
         "min_ratio": srip_min / base_min, "step_ms": 1e3 * srip_s,
         "kernels": len(srip.layer_names), **common},
        {"name": f"adaptive_smoothing_step_ratio_{name}", "value": epoch_s / base,
         "target": "<= 1.05", "min_ratio": epoch_min / base_min, "step_ms": 1e3 * epoch_s,
         "refresh": "epoch", "classes": num_classes, **common},
        {"name": f"adaptive_smoothing_refresh_step_step_ratio_{name}", "value": step_s / base,
         "target": "<= 1.05", "min_ratio": step_min / base_min, "step_ms": 1e3 * step_s,
         "refresh": "step", "classes": num_classes, **common},
    ]


def bench_tricks_mobilenet_v2_32x32():
    """SRIP on all 34 1x1 convs and adaptive smoothing (100 classes), MobileNetV2 0.35."""
    # width 0.35 keeps steps short on 2 shared CPU cores; every 1x1 conv
    # (expand, project, head) is still there.
    return _step_ratios("mobilenet_v2_cifar_32x32", lambda: mntk.models.mobilenet_v2_cifar(
        input_shape=(32, 32, 3), num_classes=100, width_multiplier=0.35), 100,
        blocks=6, steps=2)


def bench_tricks_digits_cnn():
    """SRIP on all 1x1 convs of the demo model and adaptive smoothing (10 classes)."""
    return _step_ratios("digits_cnn_16x16", lambda: mntk.models.digits_cnn(), 10)
