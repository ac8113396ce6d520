"""Loading models that contain mntk and tfmot objects.

``mntk.load_model(path)`` = ``keras.models.load_model`` inside tfmot's
``quantize_scope`` (QAT wrappers and quantizers), tfmot's ``prune_scope``
(pruning wrappers) and mntk's registered classes. Save with
``model.save("model.keras")`` (Keras v3 format) or ``.h5``; both round-trip
every mntk scheme (see tests/serialization_test.py).
"""
import tensorflow_model_optimization as tfmot

from mntk.compat import keras


def custom_objects():
    """Every class a saved mntk model may need by name (tfmot's included).

    Importing mntk's modules registers their layers, losses, regularizers and
    activations (``mntk>...`` names); the plain class names are added too, for
    configs that store a class by its bare name (e.g. compiled losses).
    """
    import importlib
    from mntk.quantization import schemes
    objects = dict(schemes.custom_objects())
    importlib.import_module("mntk.prepare")  # registers hard_swish / hard_sigmoid
    for name in ("models", "losses", "regularizers", "callbacks", "early_exit"):
        module = importlib.import_module(f"mntk.{name}")
        for attr in getattr(module, "__all__", []):
            value = getattr(module, attr, None)
            if isinstance(value, type):
                objects.setdefault(attr, value)
    return objects


def load_model(path, custom_objects=None, compile=True, **kwargs):
    """Load a Keras model that may hold QAT wrappers, pruning wrappers or mntk parts.

    Args:
      path: a ``.keras`` / ``.h5`` file or a SavedModel directory.
      custom_objects: extra name -> class entries (your own layers).
      compile: passed to ``keras.models.load_model``.
    """
    objects = globals()["custom_objects"]()
    objects.update(custom_objects or {})
    with tfmot.quantization.keras.quantize_scope(objects), \
            tfmot.sparsity.keras.prune_scope():
        return keras.models.load_model(path, compile=compile, **kwargs)
