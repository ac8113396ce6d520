"""When XNNPACK runs a sparse TFLite file with its sparse kernels.

``to_tflite(..., sparse=True)`` stores pruned weights in TFLite's sparse
format (a DENSIFY op per tensor). LiteRT's XNNPACK delegate densifies them at
load, and only when three conditions hold does it run the model with its
sparse (NCHW SpMM) kernels (Elsen et al., "Fast Sparse ConvNets", CVPR 2020);
otherwise the sparse file runs exactly like the dense one:

1. The CPU. XNNPACK rewrites the graph for sparse inference only where
   ``xnn_is_chw_compatible_config`` holds: ARM, WebAssembly, RISC-V, and x86
   *without* AVX (since XNNPACK commit cfbed0a, Dec 2020, "Disable sparse graph
   rewriting on x86 with AVX": its x86 sparse kernels are SSE only, and with
   AVX it expects dense inference to be faster). A model on an AVX x86 CPU
   never takes the sparse path, whatever its structure.
2. The precision: float32 only (a quantized value makes its node
   incompatible).
3. The structure (XNNPACK ``xnn_check_nchw_compatibility`` and
   ``xnn_subgraph_rewrite_for_nchw``): one chain from the first convolution
   to a global average pool, every node in it NCHW-compatible, every value
   in it consumed only inside it:

   - it starts at a 3x3 stride-2 Conv2D on 3 input channels with padding 1 on
     every side, reading the model input directly (a Rescaling or
     Normalization in front computes on the input and breaks it);
   - 1x1 Conv2D: stride 1, no padding, no dilation, no groups;
   - DepthwiseConv2D: 3x3 or 5x5, stride 1 or 2, depth multiplier 1, padding
     k//2 on every side. ``padding="same"`` gives that at stride 1; at
     stride 2 TensorFlow's SAME stays implicit and breaks the chain, so use
     ``ZeroPadding2D(k // 2)`` + ``padding="valid"`` (XNNPACK folds the pad);
   - batch norm (folded into the conv), ReLU/ReLU6/sigmoid/tanh/swish, Add,
     Multiply are elementwise and fit;
   - it ends at GlobalAveragePooling2D (a Dense after it is fine);
   - the 1x1 conv kernels of the chain are at least 2/3 zeros in total.

   ``keras.applications.MobileNetV2`` breaks rule 3 at its first layer: its
   ``Conv1`` is 3x3 stride 2 with ``padding="same"`` (at an even input size,
   0 on top/left and 1 on bottom/right), and its stride-2 depthwise convs
   follow ``ZeroPadding2D(((0, 1), (0, 1)))``.

``sparse_path_blocker`` checks 2 and 3 on the Keras model, ``cpu_takes_sparse_path``
checks 1 on this machine, and ``sparse_path_note`` says in one line what a
sparse file of the model will run as.
"""
import platform

import numpy as np

from mntk import wrapped
from mntk.compat import keras

# Below this fraction of exact zeros a kernel counts as dense (a trained dense
# model has none; tfmot pruning reaches its target exactly).
PRUNED_ZERO_FRACTION = 0.3


def is_pruned(model) -> bool:
    """True when ``model`` holds tfmot pruning wrappers or a weighted layer
    whose stored kernel (the latent one under a QAT wrapper: the zeros of a
    ternary quantizer's output are not pruning) has at least
    ``PRUNED_ZERO_FRACTION`` exact zeros: ``to_tflite`` then writes the
    sparse encoding."""
    if wrapped.is_pruned(model):
        return True
    for layer in wrapped.iter_layers(model):
        kernel = wrapped.effective_kernel(wrapped.unwrap(layer))
        if kernel is not None and kernel.ndim >= 2 and kernel.size >= 64 and float(
                np.mean(kernel == 0.0)) >= PRUNED_ZERO_FRACTION:
            return True
    return False

# XNNPACK skips the NCHW rewrite when the 1x1 convs of the chain have fewer
# zeros than this fraction of their weights (num_zeroes * 3 <= num_params).
MIN_ZERO_FRACTION = 2.0 / 3.0

_ELEMENTWISE_ACTIVATIONS = {"relu", "relu6", "sigmoid", "tanh", "swish", "silu",
                            "linear", "elu", "hard_sigmoid"}


def cpu_takes_sparse_path():
    """``(bool, reason)``: whether XNNPACK on this CPU runs sparse kernels."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True, f"{machine} CPU: XNNPACK's sparse path is enabled"
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False, ("x86 CPU (AVX assumed: /proc/cpuinfo unreadable): XNNPACK "
                       "skips its sparse rewrite on x86 with AVX")
    if "avx" in flags:
        return False, ("this x86 CPU has AVX: XNNPACK skips its sparse (NCHW) "
                       "rewrite there and runs the file dense; the sparse kernels "
                       "run on ARM, WebAssembly and x86 without AVX")
    return True, "x86 CPU without AVX: XNNPACK's sparse (SSE) path is enabled"


def _padding(layer):
    """``((top, bottom), (left, right))`` of a ZeroPadding2D layer."""
    (top, bottom), (left, right) = layer.padding
    return (int(top), int(bottom)), (int(left), int(right))


def _inbound(layer):
    """Layers feeding ``layer`` (the graph's own layer: a wrapper, not the
    layer it wraps) in its first functional node, unwrapped."""
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes:
        return []
    layers = nodes[0].inbound_layers
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    return [wrapped.unwrap(parent) for parent in layers]


def _explicit_padding(layer, kernel, stride, outer=None):
    """Total padding XNNPACK sees for a conv: a preceding ZeroPadding2D plus
    the conv's own; None when TensorFlow SAME stays implicit (stride > 1)."""
    extra = ((0, 0), (0, 0))
    source = _inbound(outer if outer is not None else layer)
    if len(source) == 1 and isinstance(source[0], keras.layers.ZeroPadding2D):
        extra = _padding(source[0])
    if layer.padding == "same":
        if stride != 1:
            return None
        pad = kernel - 1
        own = ((pad // 2, pad - pad // 2),) * 2
    else:
        own = ((0, 0), (0, 0))
    return tuple((a[0] + b[0], a[1] + b[1]) for a, b in zip(extra, own))


def _check_layer(layer, first, outer=None):
    """Why ``layer`` breaks the NCHW chain ("" when it fits)."""
    name = f"layer {layer.name!r} ({type(layer).__name__})"
    if isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D,
                          keras.layers.Dropout, keras.layers.BatchNormalization,
                          keras.layers.ReLU, keras.layers.Add, keras.layers.Multiply)):
        return ""
    if isinstance(layer, keras.layers.Activation):
        act = getattr(layer.activation, "__name__", str(layer.activation))
        return "" if act in _ELEMENTWISE_ACTIVATIONS else (
            f"{name}: activation {act!r} has no NCHW kernel")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k, stride = layer.kernel_size, layer.strides
        if k[0] != k[1] or k[0] not in (3, 5):
            return f"{name}: kernel {k}, XNNPACK's NCHW depthwise takes 3x3 or 5x5"
        if stride[0] != stride[1] or stride[0] not in (1, 2) or \
                tuple(layer.dilation_rate) != (1, 1) or layer.depth_multiplier != 1:
            return (f"{name}: strides {stride}, dilation {layer.dilation_rate}, "
                    f"depth multiplier {layer.depth_multiplier}; needs equal "
                    "strides 1 or 2, no dilation, multiplier 1")
        pad = _explicit_padding(layer, k[0], stride[0], outer)
        want = ((k[0] // 2,) * 2,) * 2
        if pad != want:
            got = "TensorFlow SAME at stride 2" if pad is None else f"padding {pad}"
            return (f"{name}: {got}; needs {k[0] // 2} on every side "
                    f"(ZeroPadding2D({k[0] // 2}) + padding='valid')")
        return ""
    if type(layer) is keras.layers.Conv2D:
        k, stride = layer.kernel_size, layer.strides
        if layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
            return f"{name}: groups/dilation; needs groups=1 and no dilation"
        if k == (1, 1):
            pad = _explicit_padding(layer, 1, stride[0], outer)
            if stride != (1, 1) or pad != ((0, 0), (0, 0)):
                return f"{name}: 1x1 conv with strides {stride} or padding; needs neither"
            return ""
        if not first:
            return (f"{name}: a {k[0]}x{k[1]} conv inside the network; the NCHW "
                    "chain takes only 1x1 convs after the first one")
        channels = int(layer.input_shape[-1])
        pad = _explicit_padding(layer, k[0], stride[0], outer)
        if k != (3, 3) or stride != (2, 2) or channels != 3 or pad != ((1, 1), (1, 1)):
            got = "TensorFlow SAME at stride 2" if pad is None else f"padding {pad}"
            return (f"{name}: the first conv must be 3x3 stride 2 on 3 channels with "
                    f"padding 1 on every side; it is {k[0]}x{k[1]} stride {stride} "
                    f"on {channels} channels, {got} (use ZeroPadding2D(1) + "
                    "padding='valid')")
        return ""
    return f"{name} has no NCHW form in XNNPACK's sparse path"


def sparse_path_blocker(model, quantize="none"):
    """"" when a sparse float file of ``model`` meets XNNPACK's conditions for
    its sparse kernels (module docstring, rules 2 and 3), else one line
    naming the layer that breaks the NCHW chain and why."""
    if quantize != "none":
        return (f"quantize={quantize!r}: XNNPACK's sparse path takes float32 "
                "models only")
    spatial, ended, first = [], False, True
    params = zeros = 0
    for outer in wrapped.iter_layers(model):
        layer = wrapped.unwrap(outer)
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue  # a nested model's own layers come next
        shape = layer.input_shape
        if isinstance(shape, list):
            shape = shape[0]
        if shape is None or len(shape) != 4:
            continue  # after the global pool: outside the chain
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            ended = True
            continue
        weighted = isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        if first and type(layer) is not keras.layers.Conv2D and not isinstance(
                layer, keras.layers.ZeroPadding2D):
            return (f"layer {layer.name!r} ({type(layer).__name__}) computes on the "
                    "model input before the first Conv2D; XNNPACK's NCHW chain "
                    "must start at a 3x3 stride-2 Conv2D reading the input (move "
                    "the layer into the input pipeline)")
        why = _check_layer(layer, first, outer)
        if why:
            return why
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1):
            kernel = np.asarray(wrapped.effective_kernel(layer))
            params += kernel.size
            zeros += int(np.sum(kernel == 0.0))
        if weighted:
            first = False
        spatial.append(layer.name)
    if not spatial:
        return "no conv layers: nothing for XNNPACK's sparse path"
    if not ended:
        return ("no GlobalAveragePooling2D ends the convolutional part; XNNPACK's "
                "NCHW chain must end at one")
    if params and zeros < MIN_ZERO_FRACTION * params:
        return (f"the 1x1 convs are {zeros / params:.0%} zeros; XNNPACK takes the "
                f"sparse path from {MIN_ZERO_FRACTION:.0%}")
    return ""


def sparse_kernels(model, quantize="none"):
    """``(runs_sparse_here, note)``: whether XNNPACK runs a sparse file of
    ``model`` with its sparse kernels on this machine, and one line why."""
    blocker = sparse_path_blocker(model, quantize)
    if blocker:
        return False, f"XNNPACK runs the sparse file dense on every CPU: {blocker}"
    takes, reason = cpu_takes_sparse_path()
    if takes:
        return True, f"XNNPACK runs it with its sparse kernels here ({reason})"
    return False, f"the model meets XNNPACK's sparse-kernel conditions, but {reason}"


def sparse_path_note(model, quantize="none"):
    """One line: what a sparse file of ``model`` runs as under XNNPACK."""
    return sparse_kernels(model, quantize)[1]


__all__ = ["cpu_takes_sparse_path", "sparse_path_blocker", "sparse_kernels",
           "sparse_path_note",
           "MIN_ZERO_FRACTION"]

