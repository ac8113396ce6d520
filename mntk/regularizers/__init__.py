"""Orthogonality regularizers: SRIP and its siblings SO, DSO and MC; coupled L2.

From Bansal, Chen, Wang, "Can We Gain More from Orthogonality Regularizations
in Training Deep CNNs?" (NeurIPS 2018, arXiv 1810.09102). A kernel is reshaped
to W with one column per filter (see `mntk.orthogonality`), and

- SRIP: coefficient * sigma(G - I), G the smaller Gram matrix (W^T W or
  W W^T), sigma the spectral norm by power iteration (sigma^2 with
  `squared=True`, as the WRN and KAIST code did);
- SO:   coefficient * ||W^T W - I||_F^2;
- DSO:  coefficient * (||W^T W - I||_F^2 + ||W W^T - I||_F^2);
- MC:   coefficient * ||W^T W - I||_inf (largest absolute entry, raw W);
- NormalizedMC: coefficient * max_{i != j} |cos(w_i, w_j)| (scale-invariant
  mutual coherence of the column-normalized W; not the paper's MC).

Every coefficient is a non-trainable `tf.Variable`, so
`mntk.callbacks.CoefficientSchedule` can change it between epochs without
retracing the train function. Use them as `kernel_regularizer=` /
`depthwise_regularizer=` of a layer, or attach SRIP to a built model with
`apply_srip`.

One module per concept, all re-exported here: `orthogonal` (the base class,
SO, DSO, MC, NormalizedMC, `orthogonality_regularizers`), `srip` (`SRIP`,
`apply_srip` and its options) and `l2` (`apply_l2`, coupled weight decay).
"""
from mntk.orthogonality import (  # noqa: F401  (re-exported helpers)
    LAYOUTS, gram_residual, kernel_matrix, layer_kernels, resolve_layout,
    spectral_norm_estimate, unwrap_layer)
from mntk.regularizers.l2 import L2_ON, apply_l2  # noqa: F401
from mntk.regularizers.orthogonal import (
    DSO, MC, SO, NormalizedMC, OrthogonalityRegularizer, orthogonality_regularizers)
from mntk.regularizers.srip import GRAMS, PRESETS, SRIP, VECTORS, apply_srip  # noqa: F401

__all__ = [
    "SRIP", "SO", "DSO", "MC", "NormalizedMC", "OrthogonalityRegularizer", "apply_srip",
    "spectral_norm_estimate", "kernel_matrix", "gram_residual",
    "orthogonality_regularizers", "PRESETS", "apply_l2",
]
