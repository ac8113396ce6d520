"""Loading models that contain mntk and tfmot objects, safely.

``mntk.load_model(path)`` = ``keras.models.load_model`` inside tfmot's
``quantize_scope`` (QAT wrappers and quantizers), tfmot's ``prune_scope``
(pruning wrappers) and mntk's registered classes. Save with
``model.save("model.keras")`` (Keras v3 format) or ``.h5``; both round-trip
every mntk scheme (see tests/serialization_test.py).

Safe loading: a ``.keras`` file with a ``Lambda`` layer is refused by Keras
unless ``safe_mode=False``; a legacy ``.h5`` file is not, and its Lambda
bytecode runs on load. ``load_model`` refuses code-carrying configs in
``.h5`` and ``.keras`` files alike (``UnsafeModelError``, one line naming the
layer), unless ``safe_mode=False``.

QAT models in ``.keras``: see ``mntk.quantization.keras_format`` (applied on
import of ``mntk.quantization``, which ``custom_objects`` imports).

Registered functions in ``.h5``: tf_keras writes a registered function (an
``Activation(mntk.prepare.hard_swish)`` of a prepared MobileNetV3) into an
``.h5`` config in its new format, ``{"class_name": "function", "config":
"mntk>hard_swish", ...}``, but reads ``.h5`` configs with its legacy
deserializer, which knows no class ``function``: such a file does not load
with ``keras.models.load_model``. ``load_model`` rewrites those entries to the
registered name (the legacy format for a function) in an in-memory copy of the
file; the file on disk is not changed.
"""
import io
import json

import tensorflow_model_optimization as tfmot

from mntk.compat import keras


#: configs that carry Python code: a Lambda layer's bytecode, a lambda function
_CODE_CLASSES = ("Lambda", "__lambda__")


def _code_carriers(config, where="model"):
    """(layer name, why) of every code-carrying entry in a Keras config."""
    found = []
    if isinstance(config, dict):
        name = config.get("config", {}).get("name") if isinstance(
            config.get("config"), dict) else config.get("name")
        if config.get("class_name") in _CODE_CLASSES:
            found.append((name or where, config.get("class_name")))
        elif config.get("function_type") == "lambda":
            found.append((name or where, "lambda function"))
        for key, value in config.items():
            found += _code_carriers(value, name or where)
    elif isinstance(config, (list, tuple)):
        for value in config:
            found += _code_carriers(value, where)
    return found


class UnsafeModelError(ValueError):
    """A model file whose config carries code (``layer``: where, ``why``:
    what), refused unless ``safe_mode=False``."""

    def __init__(self, path, layer, why):
        self.path, self.layer, self.why = str(path), layer, why
        super().__init__(
            f"mntk.load_model: {path} holds code in layer {layer!r} ({why}), which "
            "would run on load; load it with safe_mode=False only if you trust "
            "the file's source.")


def _refuse_code(path, raw_configs):
    for raw in raw_configs:
        if raw is None:
            continue
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        carriers = _code_carriers(json.loads(raw))
        if carriers:
            raise UnsafeModelError(path, *carriers[0])


def check_h5_safe(path):
    """Raise ``UnsafeModelError`` if the ``.h5`` file's model or training
    config carries code."""
    import h5py
    with h5py.File(path, "r") as f:
        _refuse_code(path, [f.attrs.get(k) for k in ("model_config", "training_config")])


def check_keras_safe(path):
    """Raise ``UnsafeModelError`` if the ``.keras`` file's config carries code
    (Keras refuses it too, with a message about ``safe_mode``; this one names
    the layer, as for ``.h5``). A file that is no readable ``.keras`` archive
    is left to Keras, which says why."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read("config.json")
    except (zipfile.BadZipFile, KeyError, OSError):
        return
    _refuse_code(path, [raw])


def _legacy_functions(config):
    """``config`` with every new-format registered-function entry replaced by
    its registered name; ``(config, changed)``."""
    if isinstance(config, dict):
        if (config.get("class_name") == "function" and config.get("module") == "builtins"
                and isinstance(config.get("config"), str)):
            return config["config"], True
        changed = False
        out = {}
        for key, value in config.items():
            out[key], c = _legacy_functions(value)
            changed |= c
        return out, changed
    if isinstance(config, (list, tuple)):
        pairs = [_legacy_functions(v) for v in config]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    return config, False


def _h5_for_legacy_loader(path):
    """``path``, or an in-memory ``h5py.File`` copy of it whose configs hold
    registered functions by name (see the module docstring)."""
    import h5py
    rewritten = {}
    with h5py.File(path, "r") as f:
        for key in ("model_config", "training_config"):
            raw = f.attrs.get(key)
            if raw is None:
                continue
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            config, changed = _legacy_functions(json.loads(raw))
            if changed:
                rewritten[key] = json.dumps(config)
    if not rewritten:
        return path
    with open(path, "rb") as f:
        copy = h5py.File(io.BytesIO(f.read()), "r+")
    for key, value in rewritten.items():
        copy.attrs[key] = value
    return copy


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


def load_model(path, custom_objects=None, compile=True, safe_mode=True, **kwargs):
    """Load a Keras model that may hold QAT wrappers, pruning wrappers or mntk parts.

    Args:
      path: a ``.keras`` / ``.h5`` file or a SavedModel directory.
      custom_objects: extra name -> class entries (your own layers).
      compile: passed to ``keras.models.load_model``.
      safe_mode: refuse configs that carry code (``Lambda`` layers, lambda
        functions) in ``.keras`` and ``.h5`` files alike; ``False`` only for
        files from a source you trust.
    """
    path_str = str(path)
    if path_str.endswith((".h5", ".hdf5")):
        if safe_mode:
            check_h5_safe(path_str)
        path = _h5_for_legacy_loader(path_str)
    elif path_str.endswith(".keras"):
        if safe_mode:
            check_keras_safe(path_str)
        kwargs["safe_mode"] = safe_mode
    objects = globals()["custom_objects"]()
    objects.update(custom_objects or {})
    try:
        with tfmot.quantization.keras.quantize_scope(objects), \
                tfmot.sparsity.keras.prune_scope():
            return keras.models.load_model(path, compile=compile, **kwargs)
    finally:
        if hasattr(path, "close"):  # the in-memory .h5 copy
            path.close()
