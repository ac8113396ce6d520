"""Kernel-orthogonality math shared by the regularizers in `mntk.regularizers`.

A kernel becomes a matrix W whose columns are the filters:

- conv / dense layout ("matrix"): (k..., cin, cout) -> (prod(k) * cin, cout);
  a Dense kernel (in, out) stays as is;
- depthwise layout: (k..., C, m) -> (prod(k), C * m), one column per channel filter.

SRIP (Bansal, Chen, Wang, "Can We Gain More from Orthogonality Regularizations
in Training Deep CNNs?", NeurIPS 2018, arXiv 1810.09102) penalizes the spectral
norm sigma(G - I) of the *smaller* Gram matrix G (W^T W or W W^T): for a
non-square W the larger Gram matrix has rank < its size, so sigma(G - I) >= 1
there whatever W is.

This module also finds the latent float kernels of a layer, looking through
tfmot's pruning and QAT wrappers (with `mntk.wrapped`).
"""
import numpy as np
import tensorflow as tf

from mntk import wrapped
from mntk.compat import keras

__all__ = [
    "LAYOUTS", "kernel_matrix", "gram_residual", "spectral_norm_estimate",
    "layer_kernels", "unwrap_layer",
]

LAYOUTS = ("auto", "matrix", "depthwise")

# Below this squared norm the residual is treated as exactly zero: the gradient
# of sqrt at 0 is infinite, and an orthogonal W must not produce NaNs.
_TINY = 1e-30
# Up to this many products are unrolled (the usual 1-4); more use tf.while_loop.
_UNROLL = 4


def _short_name(tensor) -> str:
    name = getattr(tensor, "name", "") or ""
    return name.split("/")[-1].split(":")[0]


def resolve_layout(kernel, layout: str) -> str:
    """'auto' -> 'depthwise' for a variable named '*depthwise_kernel', else 'matrix'."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}.")
    if layout != "auto":
        return layout
    return "depthwise" if _short_name(kernel) == "depthwise_kernel" else "matrix"


def kernel_matrix(kernel, layout: str = "auto") -> tf.Tensor:
    """The float32 matrix W of `kernel` whose columns are its filters (see module doc)."""
    layout = resolve_layout(kernel, layout)
    shape = kernel.shape
    if shape.rank is None or shape.rank < 2 or not shape.is_fully_defined():
        raise ValueError(
            f"Orthogonality regularizers need a kernel of known rank >= 2, got "
            f"{getattr(kernel, 'name', 'a tensor')} of shape {shape}; attach them "
            "to kernels, not biases or scalars.")
    w = tf.cast(kernel, tf.float32)
    dims = shape.as_list()
    if layout == "depthwise":
        if len(dims) < 3:
            raise ValueError(
                f"A depthwise kernel is (k..., channels, multiplier); got shape {dims}. "
                "Use layout='matrix' for this kernel.")
        return tf.reshape(w, [int(np.prod(dims[:-2])), dims[-2] * dims[-1]])
    return tf.reshape(w, [int(np.prod(dims[:-1])), dims[-1]])


def gram_residual(w: tf.Tensor, smaller: bool = True, transpose: bool = False) -> tf.Tensor:
    """G - I for the Gram matrix G of `w`.

    smaller=True picks the smaller of W^T W and W W^T (SRIP); otherwise
    transpose=False gives W^T W and transpose=True gives W W^T (SO/DSO).
    """
    rows, cols = w.shape.as_list()
    if smaller:
        transpose = cols > rows
    if transpose:
        gram, size = tf.matmul(w, w, transpose_b=True), rows
    else:
        gram, size = tf.matmul(w, w, transpose_a=True), cols
    return gram - tf.eye(size, dtype=w.dtype)


def spectral_norm_estimate(matrix, power_iterations: int = 2, vector=None, squared=False):
    """Power-iteration estimate of the spectral norm of a symmetric `matrix`.

    With u_0 = `vector` (normalized; a fixed pseudo-random vector when None) and
    u_{i+1} = M u_i / ||M u_i||, the estimate after n = `power_iterations`
    products with M is sigma ~= ||M u_{n-1}||; for n = 2 this is the SRIP
    reference code's estimate. Gradients flow through every product (u_0 is a
    constant), as in the reference code.

    Returns:
      (estimate, next_vector): sigma (sigma^2 when `squared`) and
      u_n = M u_{n-1} / ||M u_{n-1}||, without gradient, to persist as the next
      step's u_0 so a couple of products per step keep tracking sigma.
    """
    if int(power_iterations) < 1:
        raise ValueError(f"power_iterations must be >= 1, got {power_iterations!r}.")
    m = tf.convert_to_tensor(matrix)
    size = m.shape[-1]
    if vector is None:
        u = tf.random.stateless_normal([size], seed=[7, 11], dtype=m.dtype)
    else:
        u = tf.cast(tf.stop_gradient(tf.reshape(vector, [size])), m.dtype)
    u = tf.math.l2_normalize(u)
    steps = int(power_iterations) - 1
    if steps <= _UNROLL:
        for _ in range(steps):
            u = tf.math.l2_normalize(tf.linalg.matvec(m, u))
    else:  # a loop op keeps the graph small when many iterations are asked for
        _, u = tf.while_loop(
            lambda i, _: i < steps,
            lambda i, u: (i + 1, tf.math.l2_normalize(tf.linalg.matvec(m, u))),
            (tf.constant(0), u))
    v = tf.linalg.matvec(m, u)
    sigma_sq = tf.reduce_sum(tf.square(v))
    estimate = sigma_sq if squared else tf.sqrt(tf.maximum(sigma_sq, _TINY))
    return estimate, tf.stop_gradient(tf.math.l2_normalize(v))


# Kept under this name for the regularizers and losses that import it from here.
unwrap_layer = wrapped.unwrap


def layer_kernels(layer):
    """[(kernel_variable, layout, kind)] of a layer, looking through wrappers.

    kind is "pointwise" (a convolution whose kernel is 1 x ... x 1, including
    squeeze-excite 1x1 convs and a separable conv's pointwise kernel), "conv"
    (other convolutions, depthwise included) or "dense". Layers without a
    kernel give [].
    """
    inner = unwrap_layer(layer)
    by_name = {}
    for variable in wrapped.latent_variables(layer):
        by_name.setdefault(_short_name(variable), variable)
    conv_base = keras.layers.Conv2D.__mro__[1]  # the shared `Conv` base class
    depthwise_types = tuple(
        t for t in (getattr(keras.layers, "DepthwiseConv1D", None),
                    keras.layers.DepthwiseConv2D) if t is not None)
    separable_types = tuple(
        t for t in (getattr(keras.layers, "SeparableConv1D", None),
                    keras.layers.SeparableConv2D) if t is not None)

    def pick(name, layout, kind):
        if name not in by_name:
            raise ValueError(
                f"Layer {layer.name!r} ({type(inner).__name__}) has no variable named "
                f"{name!r} (found {sorted(by_name)}); is it built?")
        return (by_name[name], layout, kind)

    if isinstance(inner, depthwise_types):
        return [pick("depthwise_kernel", "depthwise", "conv")]
    if isinstance(inner, separable_types):
        return [pick("depthwise_kernel", "depthwise", "conv"),
                pick("pointwise_kernel", "matrix", "pointwise")]
    if isinstance(inner, conv_base):
        pointwise = all(int(k) == 1 for k in inner.kernel_size)
        return [pick("kernel", "matrix", "pointwise" if pointwise else "conv")]
    if isinstance(inner, keras.layers.Dense):
        return [pick("kernel", "matrix", "dense")]
    return []
