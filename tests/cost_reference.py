"""An independent MicroNet counter for the cost tests (not a test module).

Written from the rules in ../shared/DESIGN.md ("MicroNet scoring rules") with
plain numpy, walking Keras layer configs and output shapes; it never calls
mntk.cost, so the tests compare two transcriptions of the same formulas.
"""
import math

import numpy as np


def storage(cols, bits=32.0):
    """Cheaper of dense (sum n*b) and sparse (sum nnz*b + 1-bit mask) storage.

    `cols` is (rows, channels), one output channel per column; returns
    (storage bits, values stored per channel). Ties go dense.
    """
    cols = np.asarray(cols)
    bits_c = np.broadcast_to(np.asarray(bits, np.float64), (cols.shape[1],))
    nnz = (cols != 0).sum(axis=0)
    dense = cols.shape[0] * bits_c.sum()
    sparse = (nnz * bits_c).sum() + cols.size
    if sparse < dense:
        return float(sparse), nnz
    return float(dense), np.full(cols.shape[1], cols.shape[0])


def kernel_count(kernel, channels, spatial, bias, bits=32.0):
    """(mults, adds, param_bits) of a conv/depthwise/dense kernel.

    mults = sum_c stored_c * S, adds = sum_c (stored_c - 1) * S + N with a bias.
    """
    param_bits, stored = storage(np.asarray(kernel).reshape(-1, channels), bits)
    mults = int(stored.sum()) * spatial
    adds = int(np.maximum(stored - 1, 0).sum()) * spatial + (channels * spatial if bias else 0)
    return mults, adds, param_bits + (channels * bits if bias else 0)


def out_size(size, kernel, stride, padding):
    """ceil((H - k + 1 + 2 pad) / stride), pad = k // 2 for 'same' (DESIGN)."""
    if padding == "same":
        return math.ceil(size / stride)
    return math.ceil((size - kernel + 1) / stride)
