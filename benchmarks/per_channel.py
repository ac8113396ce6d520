"""What per-channel learned activation grids cost in TFLite export parity.

A digits CNN (the learned-precision test's, every conv input a learned
activation; or the demo's ``digits_cnn``) is trained in float, then given a short learned-precision
QAT fit (``LearnedPrecisionScheme`` from 8 bits with
``CostTarget(score=half the 8-bit score)``, as the learned-precision test),
once with per-tensor and once with per-channel activations
(``activation_per_channel``). Each is exported to int8 TFLite and checked
with ``mntk.export.verify`` on the test split: per-tensor grids export
exactly; per-channel ones go on one 8-bit grid per tensor
(``mntk.quantization._per_channel``), and the agreement and max |logit
difference| against Keras say what that costs.

    bin/bench per_channel_activation_export_agreement
"""
import os
import tempfile
import time


def _conv_cnn():
    """The learned-precision test's digits CNN (8x8): three 3x3 convs with
    ReLU, GAP, Dense; every conv input is a learned activation."""
    from mntk.compat import keras
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", name="c3")(h)
    h = keras.layers.ReLU(name="r3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, keras.layers.Dense(10, name="logits")(h), name="conv_cnn")


def per_channel_activation_export(model="conv", float_epochs=12, qat_epochs=4, seed=0,
                                  lr=None):
    """{"float": {...}, "per_tensor": {...}, "per_channel": {...}}: test accuracy
    (Keras, TFLite), export agreement, max |logit diff|, mean bits, score.

    ``model``: "conv" (the learned-precision test's CNN, 8x8 digits; lr 1e-2
    as there) or "demo" (``digits_cnn`` at 16x16, lr 3e-3; its conv/BN/ReLU
    outputs get tfmot's fixed 8-bit quantizers from the layout transforms, so
    only the SE and pooling outputs have learned activation grids).
    """
    import mntk
    import mntk.quantization as mq
    from mntk.compat import keras
    from mntk.data.digits import digits_arrays
    from mntk.models import digits_cnn

    data = digits_arrays(image_size=16 if model == "demo" else None)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    build = (lambda: digits_cnn(input_shape=(16, 16, 1))) if model == "demo" else _conv_cnn
    lr = lr or (3e-3 if model == "demo" else 1e-2)

    def compiled(model, rate):
        model.compile(keras.optimizers.Adam(rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    keras.utils.set_random_seed(seed)
    net = compiled(build(), 1e-3 if model == "demo" else 1e-2)
    net.fit(xtr, ytr, batch_size=32 if model == "demo" else 64, epochs=float_epochs,
            verbose=0)
    out = {"float": {"keras_accuracy": float(net.evaluate(xte, yte, verbose=0)[1])}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, per_channel in (("per_tensor", False), ("per_channel", True)):
            keras.utils.set_random_seed(seed)
            q = mq.quantize(net, scheme=mq.LearnedPrecisionScheme(
                init_bits=8, activation_per_channel=per_channel), skip=[])
            q(xtr[:256], training=True)  # calibrate the activation ranges
            start_score = mntk.cost.estimate(q, task="imagenet").score
            q.add_loss(mq.CostTarget(q, score=0.5 * start_score, coefficient=1.0))
            compiled(q, lr)
            start = time.perf_counter()
            q.fit(xtr, ytr, batch_size=64, epochs=qat_epochs, verbose=0)
            fit_seconds = time.perf_counter() - start
            path = mntk.export.to_tflite(q, os.path.join(tmp, name + ".tflite"),
                                         quantize="int8", progress=False).path
            parity = mntk.export.verify(path, q, (xte, yte))
            out[name] = {
                "keras_accuracy": float(q.evaluate(xte, yte, verbose=0)[1]),
                "tflite_accuracy": float(parity.accuracy_tflite),
                "agreement": float(parity.agreement),
                "max_abs_logit_diff": float(parity.max_abs_diff),
                "weight_bits": float(mq.mean_learned_bits(q, "weights")),
                "activation_bits": float(mq.mean_learned_bits(q, "activations")),
                "score": float(mntk.cost.estimate(q, task="imagenet").score),
                "score_8bit": float(start_score),
                "qat_seconds": round(fit_seconds, 1),
            }
    out["test_images"] = int(len(xte))
    out["model"] = model
    return out


_FIELDS = ("agreement", "max_abs_logit_diff", "keras_accuracy", "tflite_accuracy",
           "weight_bits", "activation_bits", "score")


def _rows(results):
    """One figure per activation layout: agreement (mean over the seeds' runs)
    with every field per seed."""
    rows = []
    for name in ("per_tensor", "per_channel"):
        runs = [r[name] for r in results]
        row = {"name": f"{name}_activation_export_agreement",
               "value": sum(r["agreement"] for r in runs) / len(runs), "unit": "fraction",
               "seeds": [r["seed"] for r in results], "model": results[0]["model"],
               "test_images": results[0]["test_images"],
               "float_accuracy": [r["float"]["keras_accuracy"] for r in results],
               "score_8bit": [r[name]["score_8bit"] for r in results]}
        for field in _FIELDS:
            row[field] = [r[field] for r in runs]
        rows.append(row)
    return rows


def bench_per_channel_activation_export_agreement(seeds=(0, 1, 2)):
    """Per-tensor vs per-channel activations on the test's conv CNN."""
    return _rows([dict(per_channel_activation_export(seed=s), seed=s) for s in seeds])


def bench_per_channel_activation_export_agreement_demo():
    """The same on the demo's digits_cnn (16x16), a shorter fit (CPU time)."""
    result = per_channel_activation_export("demo", float_epochs=4, qat_epochs=2)
    return [dict(row, name=row["name"] + "_demo")
            for row in _rows([dict(result, seed=0)])]
