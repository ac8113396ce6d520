"""QAT models in the ``.keras`` format: tfmot's wrappers made to round-trip.

tfmot's ``QuantizeWrapperV2`` lists its inner
layer's variables among its own (twice, or not at all, depending on which
was built first) and its ``QuantizeLayer`` builds twice when Keras v3 loading
calls ``build_from_config`` before calling the layer, so the saved and the
rebuilt variable lists differ ("expected 3 variables, but received 5").
``patch_tfmot()`` gives both classes ``save_own_variables`` /
``load_own_variables`` over their own variables only (deduplicated, inner
layer excluded; the inner layer saves its own), and a ``build_from_config``
that leaves building to the functional call. ``mntk.quantization`` applies it
on import (``mntk.load_model`` imports it), so files saved through mntk reload
with identical outputs.
"""
from mntk.compat import keras


def _own_variables(layer):
    inner = getattr(layer, "layer", None)
    inner_ids = {id(v) for v in inner.weights} if isinstance(inner, keras.layers.Layer) else set()
    seen, own = set(), []
    for variable in list(layer._trainable_weights) + list(layer._non_trainable_weights):
        if id(variable) in seen or id(variable) in inner_ids:
            continue
        seen.add(id(variable))
        own.append(variable)
    return own


def _save_own_variables(self, store):
    for i, variable in enumerate(_own_variables(self)):
        store[str(i)] = variable.numpy()


def _load_own_variables(self, store):
    own = _own_variables(self)
    if len(store.keys()) != len(own):
        raise ValueError(
            f"mntk.load_model: layer {self.name!r} has {len(own)} quantizer variables "
            f"but the file holds {len(store.keys())}; it was saved by another "
            "mntk/tfmot version or without mntk imported. Save it again as .h5.")
    for i, variable in enumerate(own):
        variable.assign(store[str(i)])


def _build_from_config(self, config):
    """Build on the functional call only (tfmot's build is not idempotent)."""


def patch_tfmot():
    """Make tfmot's QAT layers round-trip through ``.keras`` (see module doc)."""
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layer, quantize_wrapper)
    for cls in (quantize_wrapper.QuantizeWrapper, quantize_layer.QuantizeLayer):
        if getattr(cls, "_mntk_patched", False):
            continue
        cls.save_own_variables = _save_own_variables
        cls.load_own_variables = _load_own_variables
        cls.build_from_config = _build_from_config
        cls._mntk_patched = True


patch_tfmot()
