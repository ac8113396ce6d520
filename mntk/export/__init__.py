"""TFLite export of tf_keras models and the LiteRT parity check.

    result = mntk.export.to_tflite(model, "model.tflite", quantize="int8",
                                   representative_data=x_train[:300])
    parity = mntk.export.verify(result.path, model, (x_test, y_test))
    parity.agreement, parity.max_abs_diff, parity.to_dict()

``to_tflite_staged``/``StagedRunner`` (early-exit staged export and its
LiteRT runner) and ``size_report`` (packed size at learned bit widths) live in
``mntk.export.staged``, ``mntk.export.staged_runner`` and ``mntk.export.size``
and are imported on first use; ``mntk.export.representative`` turns int8
calibration data into the converter's generator.
"""
import importlib

from mntk.export.sparse_path import is_pruned
from mntk.export.tflite import (ExportError, ExportResult, QUANTIZE_MODES,
                                is_qat_model, to_tflite)
from mntk.export.verify import OutputParity, VerifyResult, verify

_LAZY = {
    "to_tflite_staged": "mntk.export.staged",
    "StagedRunner": "mntk.export.staged_runner",
    "size_report": "mntk.export.size",
}

__all__ = ["to_tflite", "verify", "ExportResult", "VerifyResult", "OutputParity",
           "ExportError", "QUANTIZE_MODES", "is_qat_model", "is_pruned", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mntk.export' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
