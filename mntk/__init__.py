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
