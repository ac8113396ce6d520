"""One-call quantization and read-outs of a quantized model."""
import copy

import numpy as np
import tensorflow_model_optimization as tfmot

from mntk import wrapped
from mntk.compat import ensure_tf_keras, keras
from mntk.quantization import schemes as _schemes
from mntk.quantization.keras_format import patch_tfmot as _patch_tfmot

_patch_tfmot()  # QAT models round-trip through .keras (see keras_format)

_qk = tfmot.quantization.keras
_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _check_model(model):
    ensure_tf_keras(model, "model")
    if not isinstance(model, keras.Model):
        raise TypeError(f"quantize: expected a keras.Model, got layer {model.name!r}; "
                        "wrap it in a Functional or Sequential model.")
    if not isinstance(model, keras.Sequential) and not model._is_graph_network:
        raise ValueError(
            f"quantize: model {model.name!r} is a subclassed keras.Model; tfmot can "
            "only quantize Sequential or Functional models. Rebuild it with the "
            "Functional API (keras.Input -> layers -> keras.Model).")
    if not model.built:
        raise ValueError(f"quantize: model {model.name!r} is not built; call "
                         "model.build(input_shape) or build it on a keras.Input.")


def _check_supported(model, scheme, skipped):
    """One-line error for a layer the scheme cannot quantize (instead of tfmot's
    traceback from inside quantize_apply)."""
    registry = scheme.get_quantize_registry()
    for layer in model.layers:
        if (layer.name in skipped or isinstance(layer, keras.layers.InputLayer)
                or registry.supports(layer)):
            continue
        raise ValueError(
            f"quantize: layer {layer.name!r} ({type(layer).__name__}) has no "
            f"quantization rule in {type(scheme).__name__}; leave it float with "
            f"skip=[{layer.name!r}, ...], or annotate it with a QuantizeConfig "
            "(tfmot.quantization.keras.quantize_annotate_layer).")


def _is_pruned(model):
    return wrapped.is_pruned(model)


def default_skip(model):
    """Names of the first conv and the last Dense (TTQ keeps them full
    precision), with the BatchNormalization that directly follows the conv."""
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)
             and not isinstance(l, keras.layers.DepthwiseConv2D)]
    denses = [l.name for l in model.layers if isinstance(l, keras.layers.Dense)]
    names = set(denses[-1:])
    if convs:
        names.add(convs[0].name)
        for node in convs[0]._outbound_nodes:
            if isinstance(node.outbound_layer, keras.layers.BatchNormalization):
                names.add(node.outbound_layer.name)
    return names


def _resolve_scheme(scheme, pruned):
    if isinstance(scheme, str):
        if scheme != "int8":
            raise ValueError(f"quantize: scheme={scheme!r}; use 'int8' or a scheme "
                             "object (TernaryScheme(), LearnedPrecisionScheme(), "
                             "BinaryScheme()).")
        if pruned:
            return _prune_preserve_scheme()
        return _schemes.Int8Scheme()
    if not hasattr(scheme, "get_quantize_registry"):
        raise TypeError(f"quantize: scheme must be 'int8' or a tfmot QuantizeScheme, "
                        f"got {type(scheme).__name__}.")
    return scheme


def _prune_preserve_scheme():
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        default_8bit_prune_preserve_quantize_scheme as pp)
    return pp.Default8BitPrunePreserveQuantizeScheme()


def quantize(model, scheme="int8", skip=None, calibration_data=None, calibration_samples=256):
    """Annotate and apply quantization-aware training in one call.

    Args:
      model: a built Functional or Sequential tf_keras model, not modified (a
        model wrapped for pruning is stripped first; its zeros are kept while
        training). It is prepared first (``mntk.prepare``): TF-op arithmetic
        becomes Keras layers, nested models are flattened.
      scheme: "int8" (tfmot's default 8-bit scheme; its prune-preserving variant
        for a pruned model), ``TernaryScheme()``, ``LearnedPrecisionScheme()``,
        ``BinaryScheme()`` or any tfmot ``QuantizeScheme``.
      skip: layer names, or a predicate ``fn(layer) -> bool``, of layers left
        float (not annotated). None: the first conv and last Dense for the
        ternary and binary schemes, nothing otherwise. Leading input
        preprocessing layers (``Rescaling``, ``Normalization``, resizing) are
        always left float.
      calibration_data: model inputs (array, list/dict of arrays, Dataset or
        iterable of ``x`` / ``(x, y)``). Given, every activation quantizer
        starts at its tensor's range on these inputs
        (``mntk.quantization.calibrate_ranges``) instead of tfmot's [-6, 6],
        which a short fit barely moves. Recommended whenever the fit is short
        or the activations are far from [-6, 6].
      calibration_samples: samples of ``calibration_data`` used at most.

    Returns:
      A new QAT model (tfmot ``QuantizeWrapperV2`` layers); compile it again.
    """
    from mntk import prepare as _prepare
    _check_model(model)
    pruned = _is_pruned(model)
    if pruned:
        model = tfmot.sparsity.keras.strip_pruning(model)
    # A copy with TF-op arithmetic as Keras layers and nested models flattened;
    # the caller's model is never annotated or rebuilt in place.
    model = _prepare.rebuild(model, what="quantize")[0]
    scheme = _resolve_scheme(scheme, pruned)
    if isinstance(scheme, _schemes._MntkScheme):
        scheme = copy.copy(scheme)  # the caller's scheme stays model-independent
        scheme.model_output_names = frozenset(model.output_names)
    if skip is None:
        skip = default_skip(model) if getattr(scheme, "default_skip_first_last", False) else set()
    if callable(skip):
        skipped = {l.name for l in model.layers if skip(l)}
    else:
        skipped = set([skip] if isinstance(skip, str) else skip)
        unknown = skipped - {l.name for l in model.layers}
        if unknown:
            raise ValueError(f"quantize: skip names {sorted(unknown)} are not layers "
                             f"of {model.name!r}; layers: {[l.name for l in model.layers]}")
    # Input preprocessing (Rescaling, Normalization, resizing) stays float.
    skipped |= set(_prepare.preprocessing_layers(model))
    _check_supported(model, scheme, skipped)

    def annotate(layer):
        if layer.name in skipped or isinstance(layer, keras.layers.InputLayer):
            return layer
        return _qk.quantize_annotate_layer(layer)

    with _qk.quantize_scope(_schemes.custom_objects()):
        annotated = keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        qat = _qk.quantize_apply(annotated, scheme=scheme)
    if calibration_data is not None:
        from mntk.quantization.calibration import calibrate_ranges
        calibrate_ranges(qat, calibration_data, max_samples=calibration_samples)
    return qat


def _wrappers(model):
    return wrapped.quantize_wrappers(model)


def quantized_weights(model):
    """{layer name: effective (fake-quantized, inference-mode) kernel as numpy}."""
    out = {}
    for wrapper in _wrappers(model):
        for entry in wrapped.weight_quantizers(wrapper):
            out[wrapper.layer.name] = entry.effective()
    return out


def _bits_of(quantizer, qvars):
    if hasattr(quantizer, "cost_bits"):
        return float(np.mean(quantizer.cost_bits(qvars)))
    if hasattr(quantizer, "num_bits"):
        return float(quantizer.num_bits)
    raise TypeError(f"bit_widths: quantizer {type(quantizer).__name__} has neither "
                    "cost_bits() nor num_bits.")


def bit_widths(model):
    """{layer name: {"weights": mean bits, "activations": bits}} of a QAT model.

    Entries are None where the layer has no weight / activation quantizer.
    """
    out = {}
    for wrapper in _wrappers(model):
        entry = {"weights": None, "activations": None}
        for weight in wrapped.weight_quantizers(wrapper):
            entry["weights"] = _bits_of(weight.quantizer, weight.variables)
        acts = [a for a in wrapped.activation_quantizers(wrapper) if a.kind == "post_activation"]
        acts += wrapped.output_quantizers(wrapper)
        if acts:  # the tensor the layer hands on: its output if quantized
            entry["activations"] = _bits_of(acts[-1].quantizer, acts[-1].variables)
        out[wrapper.layer.name] = entry
    return out


def mean_weight_bits(model):
    """Parameter-weighted mean bits over the quantized kernels of a QAT model.

    Per-channel bits weigh equally within a tensor (channels are equal-sized).
    """
    total = count = 0.0
    for wrapper in _wrappers(model):
        for entry in wrapped.weight_quantizers(wrapper):
            n = float(np.prod(entry.weight.shape))
            total += _bits_of(entry.quantizer, entry.variables) * n
            count += n
    return total / count if count else float("nan")


def freeze_precision(model):
    """Fix every learned bit width (gamma) so fine-tuning only moves ranges/weights.

    Returns the names of the frozen variables. Recompile the model afterwards.
    """
    frozen = []
    for wrapper in _wrappers(model):
        for quantizer in wrapped.all_quantizers(wrapper):
            if hasattr(quantizer, "trainable_bits"):
                quantizer.trainable_bits = False  # so a saved model reloads frozen
        keep = []
        for var in wrapper._trainable_weights:
            if var.name.split("/")[-1].split(":")[0].endswith("_gamma"):
                wrapper._non_trainable_weights.append(var)
                frozen.append(var.name)
            else:
                keep.append(var)
        wrapper._trainable_weights[:] = keep  # by identity: tensors have no bool ==
    return frozen
