"""Speed of mntk.cost.estimate on ImageNet-size models (target: < 5 s)."""
import time

from mntk.compat import keras
import mntk


def _time_estimate(model, **kwargs):
    mntk.cost.estimate(model, **kwargs)          # warm: imports, first numpy calls
    start = time.perf_counter()
    report = mntk.cost.estimate(model, **kwargs)
    return time.perf_counter() - start, report


def bench_estimate_5m_224():
    """MobileNetV2-1.4 (6.1M params, the ImageNet baseline's architecture) and
    EfficientNet-B0 (5.3M) at 224x224, random weights, counted on ImageNet."""
    results = []
    builders = {
        "mobilenetv2_1.4": lambda: keras.applications.MobileNetV2(
            alpha=1.4, weights=None, input_shape=(224, 224, 3)),
        "efficientnet_b0": lambda: keras.applications.EfficientNetB0(
            weights=None, input_shape=(224, 224, 3)),
    }
    for name, build in builders.items():
        keras.backend.clear_session()
        model = build()
        seconds, report = _time_estimate(model, task="imagenet")
        extra = {"keras_params": int(model.count_params()), "cost_params": report.params,
                 "cost_ops": report.ops, "score": report.score,
                 "layers": len(model.layers), "rows": len(report.layers)}
        results.append({"name": f"estimate_{name}_224", "value": seconds, "unit": "s",
                        "target": "< 5 s", **extra})
    return results
