"""The one Keras import of mntk, and the guard against Keras 3 objects.

tfmot (quantization, pruning) only understands Keras 2, which TensorFlow 2.16+
ships separately as ``tf_keras``. Every mntk module does
``from mntk.compat import keras``; user code should do the same, so that the
models it builds are the Keras mntk can transform.
"""
import os

# Must be set before TensorFlow is first imported, so `tf.keras` inside
# TensorFlow and tfmot resolves to tf_keras as well.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras

__all__ = ["keras", "ensure_tf_keras", "is_keras3_object"]


def is_keras3_object(obj) -> bool:
    """True when ``obj`` is an instance of a Keras 3 (``keras`` package) class."""
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def ensure_tf_keras(obj, what: str = "model"):
    """Return ``obj`` unchanged if it is a tf_keras Model/Layer, else raise.

    Raises:
      TypeError: for a Keras 3 object (tfmot would otherwise report a misleading
        "not a Sequential or Functional model"), or for anything that is not a
        Keras object at all.
    """
    if isinstance(obj, (keras.Model, keras.layers.Layer)):
        return obj
    name = getattr(obj, "name", None)
    label = f"{type(obj).__name__}{f' {name!r}' if name else ''}"
    if is_keras3_object(obj):
        raise TypeError(
            f"mntk got a Keras 3 {what} ({label}); mntk and tfmot need Keras 2 "
            "(tf_keras). Build it with `from mntk.compat import keras` instead of "
            "`import keras` or `tf.keras`.")
    raise TypeError(
        f"mntk expected a Keras {what} built with `from mntk.compat import keras`, "
        f"got {label}.")
