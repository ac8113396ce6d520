"""Storage of one weight tensor: the cheaper of its dense and sparse encodings.

MicroNet Challenge rules (NeurIPS 2019): a b-bit value counts b/32 of a
parameter, and a tensor may be stored either

  dense:   every value at its bits,       sum_c n_c * b_c
  sparse:  the nonzeros at their bits + a 1-bit mask over the whole tensor,
           sum_c nnz_c * b_c + n
  block:   (tfmot block sparsity) the kept blocks' values at their bits + one
           bit per block, sum_c kept_c * b_c + n_blocks

where c runs over output channels, n_c are the values feeding channel c and
b_c its bits (per-channel bit widths are summed per channel). The count takes
the cheaper encoding (dense on a tie), so a dense model's count does not
depend on the few exact zeros a random init holds, and a low-bit kernel
whose values round to 0 is never charged more than storing it dense. The
values a kernel actually multiplies are the ones the chosen encoding stores:
all of them when dense, the nonzeros (kept blocks) when sparse.
Biases are never sparse (callers count them dense).
"""
import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["Storage", "tensor_storage", "bit_groups"]


@dataclasses.dataclass
class Storage:
    """The chosen encoding of a (rows, channels) weight matrix.

    encoding: "dense", "sparse" or "block".
    stored: values stored (and multiplied) per output channel.
    param_bits: storage of the values and the mask, in bits.
    mask_bits: the mask's share of `param_bits` (0 when dense).
    dense_bits / sparse_bits: both candidates, for the report.
    """
    encoding: str
    stored: np.ndarray
    param_bits: float
    mask_bits: float
    dense_bits: float
    sparse_bits: float


def _block_kept(values: np.ndarray, block_shape: Sequence[int]):
    """(kept values per column, number of blocks) of a 2-D tensor in blocks.

    Blocks tile the matrix from the top-left corner (tfmot pads `SAME` at the
    bottom/right edges); a block is kept when any of its values is nonzero.
    """
    rows, cols = values.shape
    bh, bw = (int(d) for d in block_shape)
    nbh, nbw = -(-rows // bh), -(-cols // bw)
    padded = np.zeros((nbh * bh, nbw * bw), dtype=bool)
    padded[:rows, :cols] = values != 0
    kept = padded.reshape(nbh, bh, nbw, bw).any(axis=(1, 3))       # (nbh, nbw)
    per_cell = np.repeat(np.repeat(kept, bh, axis=0), bw, axis=1)[:rows, :cols]
    return per_cell.sum(axis=0).astype(np.int64), nbh * nbw


def tensor_storage(values: np.ndarray, bits_c: np.ndarray,
                   block_shape: Optional[Sequence[int]] = None,
                   force: Optional[str] = None) -> Storage:
    """The cheaper encoding of `values` (rows, channels) at `bits_c` per channel.

    `block_shape` (tfmot `block_size`, 2-D kernels only) makes the sparse
    candidate a block-sparse one. `force="sparse"` always takes the sparse
    (mask) encoding, as some entries counted (see `mntk.cost.profiles`).
    """
    values = np.asarray(values)
    bits_c = np.asarray(bits_c, dtype=np.float64)
    rows, channels = values.shape
    size = rows * channels
    full = np.full(channels, rows, dtype=np.int64)
    dense_bits = float(rows * bits_c.sum())
    if block_shape is not None and tuple(int(d) for d in block_shape) != (1, 1):
        kept, n_blocks = _block_kept(values, block_shape)
        sparse_bits = float(np.dot(kept, bits_c)) + n_blocks
        sparse = Storage("block", kept, sparse_bits, float(n_blocks), dense_bits, sparse_bits)
    else:
        nnz = np.count_nonzero(values, axis=0).astype(np.int64)
        sparse_bits = float(np.dot(nnz, bits_c)) + size
        sparse = Storage("sparse", nnz, sparse_bits, float(size), dense_bits, sparse_bits)
    if force == "sparse" or (force is None and sparse_bits < dense_bits):
        return sparse
    return Storage("dense", full, dense_bits, 0.0, dense_bits, sparse_bits)


def bit_groups(bits_c) -> list:
    """[{"bits": b, "channels": n}] for each distinct per-channel bit width."""
    bits_c = np.atleast_1d(np.asarray(bits_c, dtype=np.float64))
    values, counts = np.unique(bits_c, return_counts=True)
    return [{"bits": float(b), "channels": int(n)} for b, n in zip(values, counts)]
