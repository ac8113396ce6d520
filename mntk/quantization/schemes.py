"""tfmot glue: a ``QuantizeConfig`` carrying mntk quantizers, a registry that
hands it to each layer, and the ``QuantizeScheme``s users pass to
``quantize`` / ``tfmot.quantization.keras.quantize_apply(..., scheme=...)``.

The schemes reuse tfmot's default 8-bit layout transforms (Conv+BN(+ReLU)
patterns, so BN folds into the conv at conversion) and its registry for which
layers and attributes are quantized; only the quantizers change.
"""
import tensorflow_model_optimization as tfmot

from mntk.compat import keras
from mntk.quantization.binary import BinaryWeightQuantizer
from mntk.quantization.learned import (LearnedPrecisionActivationQuantizer,
                                       LearnedPrecisionWeightQuantizer)
from mntk.quantization.ternary import TernaryWeightQuantizer

_qk = tfmot.quantization.keras
_Default8BitScheme = _qk.default_8bit.Default8BitQuantizeScheme
_QuantizeConfig = _qk.QuantizeConfig

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_registry as _registry8)

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_layout_transform as _layout8, default_8bit_transforms as _t8)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E402
    model_transformer as _model_transformer, transforms as _transforms)

_serialize = keras.utils.serialize_keras_object


class _AddReLUQuantize(_t8.LayerReLUQuantize):
    """tfmot's Add/Conv/Dense + ReLU transform, restricted to Add.

    tfmot's version gives the Conv/Dense before a ReLU a NoOpQuantizeConfig,
    which leaves its *weights* unquantized (a tfmot bug, for 8-bit too); the
    registry's config for them already skips output quantization.
    """

    def pattern(self):
        return _transforms.LayerPattern("ReLU", inputs=[_transforms.LayerPattern("Add")])


class _AddReluActivationQuantize(_t8.LayerReluActivationQuantize):
    def pattern(self):
        return _transforms.LayerPattern("Activation", config={"activation": "relu"},
                                        inputs=[_transforms.LayerPattern("Add")])


class MntkLayoutTransform(_layout8.Default8BitQuantizeLayoutTransform):
    """tfmot's default 8-bit transforms with the ReLU fix above."""

    def apply(self, model, layer_quantize_map):
        transforms = [
            _t8.InputLayerQuantize(), _t8.SeparableConv1DQuantize(),
            _t8.SeparableConvQuantize(),
            _t8.Conv2DReshapeBatchNormReLUQuantize(),
            _t8.Conv2DReshapeBatchNormActivationQuantize(),
            _t8.Conv2DBatchNormReLUQuantize(), _t8.Conv2DBatchNormActivationQuantize(),
            _t8.Conv2DReshapeBatchNormQuantize(), _t8.Conv2DBatchNormQuantize(),
            _t8.ConcatTransform6Inputs(), _t8.ConcatTransform5Inputs(),
            _t8.ConcatTransform4Inputs(), _t8.ConcatTransform3Inputs(),
            _t8.ConcatTransform(), _t8.DenseBatchNormQuantize(),
            _t8.DenseBatchNormReLUQuantize(), _t8.DenseBatchNormActivationQuantize(),
            _AddReLUQuantize(), _AddReluActivationQuantize(),
        ]
        return _model_transformer.ModelTransformer(
            model, transforms, set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()


def _deserialize(config):
    if config is None or isinstance(config, _qk.quantizers.Quantizer):
        return config
    with _qk.quantize_scope():
        return keras.utils.deserialize_keras_object(config)


@keras.utils.register_keras_serializable(package="mntk")
class MntkQuantizeConfig(_QuantizeConfig):
    """Quantize ``weight_attrs`` with ``weight_quantizer`` and activations /
    output with ``activation_quantizer`` (same contract as tfmot's
    ``Default8BitQuantizeConfig``, with the quantizers as arguments)."""

    def __init__(self, weight_attrs, activation_attrs, quantize_output,
                 weight_quantizer=None, activation_quantizer=None):
        self.weight_attrs = list(weight_attrs)
        self.activation_attrs = list(activation_attrs)
        self.quantize_output = bool(quantize_output)
        self.weight_quantizer = _deserialize(weight_quantizer)
        self.activation_quantizer = _deserialize(activation_quantizer)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, a), self.weight_quantizer) for a in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        return [(getattr(layer, a), self.activation_quantizer)
                for a in self.activation_attrs]

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, weight in zip(self.weight_attrs, quantize_weights):
            setattr(layer, attr, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        for attr, activation in zip(self.activation_attrs, quantize_activations):
            setattr(layer, attr, activation)

    def get_output_quantizers(self, layer):
        return [self.activation_quantizer] if self.quantize_output else []

    def get_config(self):
        return {"weight_attrs": self.weight_attrs,
                "activation_attrs": self.activation_attrs,
                "quantize_output": self.quantize_output,
                "weight_quantizer": _serialize(self.weight_quantizer),
                "activation_quantizer": _serialize(self.activation_quantizer)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _default_activation_quantizer():
    return _qk.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)


# Layers tfmot's default registry refuses that only need their output
# quantized (they have no weights): MicroNet-style nets use all of them.
_OUTPUT_ONLY = (keras.layers.Multiply, keras.layers.Subtract, keras.layers.Maximum,
                keras.layers.Minimum, keras.layers.BatchNormalization,
                keras.layers.Rescaling)
_TFMOT_ACTIVATIONS = ("relu", "swish", "gelu", "relu6", "linear", "softmax",
                      "sigmoid", "tanh")


def _activation_name(layer):
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", type(fn).__name__)


class MntkQuantizeRegistry(_registry8.Default8BitQuantizeRegistry):
    """tfmot's default registry, with weight/activation quantizers replaced,
    plus output-only quantization for weightless layers tfmot refuses
    (Multiply, standalone BatchNormalization, Activation("hard_sigmoid"), ...).

    Args:
      weight_quantizer_fn: ``fn(layer, depthwise) -> Quantizer`` for kernels,
        or None to keep tfmot's 8-bit weight quantizers.
      activation_quantizer_fn: ``fn(layer) -> Quantizer`` for activations/outputs.
    """

    def __init__(self, weight_quantizer_fn=None, activation_quantizer_fn=None):
        super().__init__(disable_per_axis=False)
        self._weight_fn = weight_quantizer_fn
        self._activation_fn = activation_quantizer_fn or (lambda layer: _default_activation_quantizer())

    def _gap_filled(self, layer):
        if isinstance(layer, _OUTPUT_ONLY):
            return True
        return (isinstance(layer, keras.layers.Activation)
                and _activation_name(layer) not in _TFMOT_ACTIVATIONS)

    def supports(self, layer):
        return (getattr(layer, "quantize_passthrough", False) or self._gap_filled(layer)
                or super().supports(layer))

    def get_quantize_config(self, layer):
        if getattr(layer, "quantize_passthrough", False):
            # moves values only (mntk.models.layers: ChannelPad, NearestUpsample,
            # KeepBranch): its input's quantization carries through
            return MntkQuantizeConfig([], [], False, None, None)
        if self._gap_filled(layer):
            return MntkQuantizeConfig([], [], True, None, self._activation_fn(layer))
        config = super().get_quantize_config(layer)
        if self._weight_fn is None or type(config) not in (
                _registry8.Default8BitQuantizeConfig,
                _registry8.Default8BitConvQuantizeConfig):
            return config  # Activation layers, RNNs, int8: tfmot's own handling
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        weight_q = self._weight_fn(layer, depthwise) if config.weight_attrs else None
        return MntkQuantizeConfig(config.weight_attrs, config.activation_attrs,
                                  config.quantize_output, weight_q,
                                  self._activation_fn(layer))


class _MntkScheme(_Default8BitScheme):
    """Base: tfmot's 8-bit layout transforms + an ``MntkQuantizeRegistry``."""

    #: layers quantize() leaves float unless ``skip`` says otherwise
    default_skip_first_last = False
    #: names of the model's output layers; ``quantize`` sets them on its copy
    #: of the scheme so low-bit schemes can keep the outputs at 8 bits
    model_output_names = frozenset()

    def __init__(self):
        super().__init__(disable_per_axis=False)

    def weight_quantizer(self, layer, depthwise):
        raise NotImplementedError

    def activation_quantizer(self):
        return _default_activation_quantizer()

    def activation_quantizer_for(self, layer):
        """The activation/output quantizer of ``layer`` (default: the scheme's)."""
        return self.activation_quantizer()

    def get_layout_transformer(self):
        return MntkLayoutTransform()

    def get_quantize_registry(self):
        return MntkQuantizeRegistry(self.weight_quantizer, self.activation_quantizer_for)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Int8Scheme(_MntkScheme):
    """tfmot's default 8-bit scheme (its quantizers and transforms unchanged),
    plus output quantization for the weightless layers tfmot refuses."""

    def get_quantize_registry(self):
        return MntkQuantizeRegistry(None, None)


_DEPTHWISE_CHOICES = ("int8", "same")


def _check_depthwise(owner, depthwise):
    if depthwise not in _DEPTHWISE_CHOICES:
        raise ValueError(
            f"{owner}: depthwise={depthwise!r}; use 'int8' (8-bit per-channel "
            "depthwise kernels, the default) or 'same' (the scheme's own low-bit "
            "quantizer on depthwise kernels too).")


def _int8_depthwise_quantizer(preserve_sparsity):
    """8-bit per-channel symmetric depthwise kernel with a learned range (the
    learned-precision quantizer with its bits fixed at 8), exported exactly."""
    return LearnedPrecisionWeightQuantizer(8, 8, 8, depthwise=True,
                                           preserve_sparsity=preserve_sparsity,
                                           trainable_bits=False)


class TernaryScheme(_MntkScheme):
    """TTQ weights (see ``ternary.py``), 8-bit activations (tfmot's quantizer).

    By default ``quantize`` keeps the first conv and the last Dense float, as TTQ did.

    Args:
      threshold, init, decay_scales: see ``TernaryWeightQuantizer`` (the
        official code: ``init="ones", decay_scales=True``).
      preserve_sparsity: keep a pruned model's zeros.
      depthwise: "int8" (default) quantizes DepthwiseConv2D kernels to 8 bits
        per channel instead of ternary: a 3x3 depthwise filter has only 9
        weights, and 3 values for them cost the digits CNN ~1.5 points of
        top-1 (97.2% vs 96.4%, measured; TTQ's networks had no depthwise
        convs), while they hold only ~7% of its weights. "same": ternary too.
    """
    default_skip_first_last = True

    def __init__(self, threshold=0.05, init="mean", preserve_sparsity=True,
                 depthwise="int8", decay_scales=False):
        super().__init__()
        self.threshold, self.init = threshold, init
        self.decay_scales = bool(decay_scales)
        self.preserve_sparsity = preserve_sparsity
        _check_depthwise("TernaryScheme", depthwise)
        self.depthwise = depthwise
        TernaryWeightQuantizer(threshold, init)  # validate arguments now

    def weight_quantizer(self, layer, depthwise):
        if depthwise and self.depthwise == "int8":
            return _int8_depthwise_quantizer(self.preserve_sparsity)
        return TernaryWeightQuantizer(self.threshold, self.init,
                                      self.preserve_sparsity, depthwise=depthwise,
                                      decay_scales=self.decay_scales)


class BinaryScheme(_MntkScheme):
    """Binary weights sign(w) * mean|w| per channel, 8-bit activations.

    ``depthwise``: "int8" (default: 8-bit per-channel depthwise kernels, for
    the reason given in ``TernaryScheme``) or "same" (binary too).
    """
    default_skip_first_last = True

    def __init__(self, clip=1.0, preserve_sparsity=True, depthwise="int8"):
        super().__init__()
        self.clip, self.preserve_sparsity = clip, preserve_sparsity
        _check_depthwise("BinaryScheme", depthwise)
        self.depthwise = depthwise

    def weight_quantizer(self, layer, depthwise):
        if depthwise and self.depthwise == "int8":
            return _int8_depthwise_quantizer(self.preserve_sparsity)
        return BinaryWeightQuantizer(self.clip, depthwise, self.preserve_sparsity,
                                     per_channel=not isinstance(layer, keras.layers.Dense))


class LearnedPrecisionScheme(_MntkScheme):
    """Learned per-channel weight range+bits, learned per-tensor (or per-channel) activation
    range+bits (see ``learned.py``).

    Args:
      init_bits, min_bits, max_bits: weight bit widths.
      activation_init_bits, activation_min_bits, activation_max_bits:
        activation bit widths (None: the weight values); set
        ``learn_activations=False`` for tfmot's fixed 8-bit activations.
      activation_per_channel: one learned range and bit width per channel
        of each quantized activation (Texas-EIC's per-channel conv inputs);
        TFLite export maps them onto one 8-bit grid per tensor, not exactly
        (see ``learned.py``). The model's outputs stay per tensor.
    """

    def __init__(self, init_bits=8, min_bits=2, max_bits=8, learn_activations=True,
                 activation_init_bits=None, activation_min_bits=None,
                 activation_max_bits=None, preserve_sparsity=True,
                 activation_per_channel=False):
        super().__init__()
        self.init_bits, self.min_bits, self.max_bits = init_bits, min_bits, max_bits
        self.learn_activations = learn_activations
        self.activation_init_bits = activation_init_bits or init_bits
        self.activation_min_bits = activation_min_bits or min_bits
        self.activation_max_bits = activation_max_bits or max_bits
        self.preserve_sparsity = preserve_sparsity
        self.activation_per_channel = bool(activation_per_channel)
        self.weight_quantizer(None, False)  # validate arguments now
        self.activation_quantizer()

    def weight_quantizer(self, layer, depthwise):
        return LearnedPrecisionWeightQuantizer(
            self.init_bits, self.min_bits, self.max_bits, depthwise,
            self.preserve_sparsity,
            per_channel=not isinstance(layer, keras.layers.Dense))

    def activation_quantizer(self):
        if not self.learn_activations:
            return _default_activation_quantizer()
        return LearnedPrecisionActivationQuantizer(
            self.activation_init_bits, self.activation_min_bits,
            self.activation_max_bits, per_channel=self.activation_per_channel)

    def activation_quantizer_for(self, layer):
        # The model's outputs (logits) feed no weight layer, so low bits save
        # nothing there, but 4-bit logits have 16 levels: top-1 ties, and a
        # one-step integer rounding difference flips TFLite's argmax (measured:
        # 89% Keras/TFLite agreement, max |diff| 8.6 = 2 steps). They stay at
        # 8 bits, with a learned range.
        if (self.learn_activations and layer is not None
                and layer.name in self.model_output_names):
            return LearnedPrecisionActivationQuantizer(8, 8, 8, trainable_bits=False)
        return self.activation_quantizer()


def custom_objects():
    """Name -> class of everything a model quantized by mntk may contain."""
    from mntk.quantization.learned import ClipRange, GammaRange
    return {c.__name__: c for c in (
        MntkQuantizeConfig, TernaryWeightQuantizer, BinaryWeightQuantizer,
        LearnedPrecisionWeightQuantizer, LearnedPrecisionActivationQuantizer,
        GammaRange, ClipRange)}
