"""Quantization-aware training schemes on tfmot: TTQ, learned channel-wise
range and precision (Texas-EIC), binary, and tfmot's default int8.

    q = mntk.quantization.quantize(model, scheme=mntk.quantization.TernaryScheme())
    q = mntk.quantization.quantize(model, scheme=mntk.quantization.LearnedPrecisionScheme())
    q = mntk.quantization.quantize(model, scheme="int8")
    q = mntk.quantization.quantize(model, "int8", calibration_data=x_train[:256])
"""
from mntk import compat as _compat  # noqa: F401  (TF_USE_LEGACY_KERAS first)
from mntk.quantization.api import (bit_widths, default_skip, freeze_precision,
                                   mean_weight_bits, quantize, quantized_weights)
from mntk.quantization.binary import BinaryWeightQuantizer
from mntk.quantization.bit_training import (BitWidthAdam, CrossEntropyWithLogitDistance, Phase,
                                            PrecisionPhases, bits_step_open,
                                            is_bit_width_variable)
from mntk.quantization.calibration import calibrate_ranges
from mntk.quantization.learned import (ClipRange, GammaRange, LearnedPrecisionActivationQuantizer,
                                       LearnedPrecisionWeightQuantizer)
from mntk.quantization.losses import CostTarget, Distillation, mean_learned_bits
from mntk.quantization.schemes import (BinaryScheme, LearnedPrecisionScheme,
                                       MntkQuantizeConfig, MntkQuantizeRegistry,
                                       TernaryScheme, custom_objects)
from mntk.quantization.ternary import TernaryWeightQuantizer
from mntk.quantization.transfer import load_quantizer_ranges, quantizer_ranges

__all__ = [
    "quantize", "quantized_weights", "bit_widths", "mean_weight_bits",
    "freeze_precision", "default_skip", "TernaryScheme", "LearnedPrecisionScheme",
    "BinaryScheme", "TernaryWeightQuantizer", "LearnedPrecisionWeightQuantizer",
    "LearnedPrecisionActivationQuantizer", "BinaryWeightQuantizer", "GammaRange", "ClipRange",
    "MntkQuantizeConfig", "MntkQuantizeRegistry", "custom_objects", "CostTarget",
    "Distillation", "mean_learned_bits", "BitWidthAdam", "CrossEntropyWithLogitDistance",
    "Phase", "PrecisionPhases", "bits_step_open", "is_bit_width_variable",
    "quantizer_ranges", "load_quantizer_ranges", "calibrate_ranges",
]
