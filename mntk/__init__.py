"""mntk: the NeurIPS 2019 MicroNet Challenge tricks as Keras parts.

Submodules are imported on first use (``mntk.cost``, ``mntk.export``, ...), so
``import mntk`` stays cheap and each part only pulls in what it needs.
"""
import importlib
import os

# tf_keras for tf.keras everywhere: set before TensorFlow is first imported.
# TensorFlow itself is imported by the submodules (mntk.compat), not here, so
# the CLI can silence its start-up logs first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _skip_tfmot_keras_probe():
    """tfmot's pruning registry probes, at import, for Keras 2's private
    ``keras.engine`` (or ``keras.src.engine``). With Keras 3 installed (as
    TensorFlow 2.16+ requires) that imports all of Keras 3, scikit-learn and
    matplotlib included, about 3 s in every process, only to fail and fall
    back to ``base_layer = None``. Neither module exists in Keras 3, so marking
    both absent gives tfmot the same outcome at once. Here, not in
    ``mntk.compat``: this runs before any submodule imports tfmot."""
    import importlib.metadata
    import sys
    try:
        major = int(importlib.metadata.version("keras").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if major >= 3:
        for name in ("keras.engine", "keras.src.engine"):
            sys.modules.setdefault(name, None)


_skip_tfmot_keras_probe()

__version__ = "0.1.0"

_SUBMODULES = (
    "compat", "callbacks", "cost", "data", "early_exit", "export", "global_pruning",
    "losses", "models",
    "pruning", "quantization", "regularizers", "report", "train", "cli",
    "serialization", "wrapped", "prepare", "schedules",
)


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"mntk.{name}")
        globals()[name] = module
        return module
    if name == "load_model":
        from mntk.serialization import load_model
        return load_model
    raise AttributeError(f"module 'mntk' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + ["load_model"])
