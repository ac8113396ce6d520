"""The MicroNet score of a learned-precision QAT model as a differentiable
function of its bit widths (the Texas-EIC cost term, made exact).

MicroNet Challenge rules (NeurIPS 2019): score M = P / P_base + F / M_base,
with P the storage and F the math operations, both in 32-bit equivalents (a
b-bit value or op counts b/32). For a kernel with output channels c, n values
per channel (rows), bits b_c, input bits b_in and S output positions per
channel (``mntk.cost.storage``, ``mntk.cost.rules.kernel_row``):

    P_kernel = min(dense, sparse),   dense = n * sum_c b_c,
                                     sparse = sum_c nnz_c * b_c + n * C (1-bit mask)
    F_kernel = sum_c v_c * S * max(b_c, b_in) / 32          (multiplies)
             + sum_c (v_c - 1) * S * 32 / 32                 (adds, at the accumulator)

where v_c are the values the chosen encoding stores (n when dense, nnz_c when
sparse) and nnz_c counts the nonzeros of the *quantized* kernel (low bits
round small weights to 0). Every other row of ``mntk.cost.estimate`` is
constant, except element-wise ops on a learned activation (a ReLU layer, a
max-pool), whose multiplies count at that activation's bits.

Differentiability (Texas-EIC, trainer.py: ``maxsoft``): the bits are
``clip(round_ste(8 * gamma), min, max)``, so at integer bits the forward
value equals ``mntk.cost.estimate(model).score`` exactly; the kernel
multiplies use a straight-through max, forward ``max(b_w, b_in)``, gradient
through ``0.3 * b_w + 0.7 * b_in``, so the gradient reaches both the weight
and the activation bit widths. nnz_c and the choice of encoding carry no
gradient (they are counts). Adds stay at the accumulator width (32 bits),
as the rules say; the entry charged adds at the multiply's bits (``2 *
N_ops``), which the rules do not allow.
"""
import numpy as np
import tensorflow as tf

from mntk import wrapped
from mntk.quantization import _learned_ops as _ops
from mntk.quantization._grid import round_ste as _round_ste

__all__ = ["DifferentiableScore", "soft_max_bits", "MAX_WEIGHT_SHARE"]

#: Texas-EIC's share of the weight bits in the gradient of max(b_w, b_a).
MAX_WEIGHT_SHARE = 0.3


def soft_max_bits(weight_bits, input_bits, weight_share=MAX_WEIGHT_SHARE):
    """max(b_w, b_in) forward; gradient through ``s * b_w + (1 - s) * b_in``."""
    weight_bits = tf.convert_to_tensor(weight_bits, tf.float32)
    input_bits = tf.convert_to_tensor(input_bits, tf.float32)
    mix = weight_share * weight_bits + (1.0 - weight_share) * input_bits
    return mix + tf.stop_gradient(tf.maximum(weight_bits, input_bits) - mix)


class _Bits:
    """The bits of a tensor: max(const, learned quantizers' bits...)."""

    def __init__(self, const=None, learned=()):
        self.const = const
        self.learned = tuple(learned)

    @staticmethod
    def union(sources):
        consts = [s.const for s in sources if s.const is not None]
        learned = []
        for s in sources:
            learned.extend(l for l in s.learned if all(l is not k for k in learned))
        return _Bits(max(consts) if consts else None, learned)

    def value(self):
        """Current bits (numpy float, integer at inference) for bookkeeping."""
        return float(self.tensor().numpy())

    def tensor(self, bits_of=None):
        """The bits as a scalar tensor; ``bits_of(quantizer, variables)`` gives
        a learned quantizer's bits (default: computed afresh)."""
        if not self.learned:
            return tf.constant(32.0 if self.const is None else self.const)
        bits_of = bits_of or (lambda q, v: q.bits_tensor(v))
        # a per-channel activation counts at its widest channel, as mntk.cost does
        values = [tf.reduce_max(bits_of(q, v)) for q, v in self.learned]
        out = values[0] if len(values) == 1 else tf.reduce_max(tf.stack(values))
        if self.const is not None:
            out = tf.maximum(out, self.const)
        return out


def _is_learned_activation(quantizer):
    from mntk.quantization.learned import LearnedPrecisionActivationQuantizer
    return isinstance(quantizer, LearnedPrecisionActivationQuantizer)


def _is_learned_weight(quantizer):
    from mntk.quantization.learned import LearnedPrecisionWeightQuantizer
    return isinstance(quantizer, LearnedPrecisionWeightQuantizer)


def _output_bits(layer, in_sources):
    """The _Bits of ``layer``'s output, as ``mntk.cost``'s walker sets them."""
    from mntk.cost.rules import passes_bits
    found = None
    if wrapped.is_quantize_wrapper(layer):
        for act in wrapped.activation_quantizers(layer):
            if act.kind == "post_activation" and not wrapped.is_no_quantizer(act.quantizer):
                found = act
        for out in wrapped.output_quantizers(layer):
            if not wrapped.is_no_quantizer(out.quantizer):
                found = out
    elif wrapped.is_quantize_layer(layer):
        found = wrapped.input_quantizer(layer)
    if found is not None:
        if _is_learned_activation(found.quantizer):
            return _Bits(None, [(found.quantizer, found.variables)])
        bits = wrapped.quantizer_bits(found.quantizer, found.variables,
                                      f"layer {layer.name!r}")
        return _Bits(float(np.max(bits)))
    if passes_bits(wrapped.unwrap(layer)):
        return _Bits.union(in_sources) if in_sources else _Bits(32.0)
    return _Bits(32.0)


class _LearnedKernel:
    """One kernel row whose weights have learned bits (its constant sizes)."""

    def __init__(self, row, weight, quantizer, variables, in_bits):
        shape = [int(d) for d in weight.shape]
        if quantizer.depthwise:
            self.channels = shape[-2] * shape[-1]
        else:
            self.channels = shape[-1]
        self.rows = int(np.prod(shape)) // self.channels
        self.spatial = int(np.prod(row.shape)) // self.channels
        self.name = row.name
        self.weight, self.quantizer, self.variables = weight, quantizer, variables
        self.in_bits = in_bits


class DifferentiableScore:
    """M = P / P_base + F / M_base of a QAT model, differentiable in its learned bits.

    Built once from ``mntk.cost.estimate(model, task)``: the rows that do not
    depend on learned bits are summed into constants; the learned kernels and
    the element-wise ops on learned activations are recounted on every call
    (see the module docstring for the formulas). At integer bits the value
    equals ``mntk.cost.estimate(model, task=task).score`` (tested).

    Args:
      model: a model quantized with ``LearnedPrecisionScheme``.
      task: "imagenet" (P_base 6.9M, M_base 1170M, Texas-EIC's) or "cifar100".
    """

    def __init__(self, model, task="imagenet"):
        from mntk.cost import BASELINES, estimate
        from mntk.cost.walker import flatten_graph
        self.task = task
        report = estimate(model, task=task)
        base = BASELINES[task]
        self.p_base, self.m_base = float(base.params), float(base.ops)
        self.acc_bits = float(report.accumulator_bits)
        calls, _ = flatten_graph(model)
        bits_of = {(0, id(t)): _Bits(32.0) for t in model.inputs}
        by_name = {}
        for call in calls:
            sources = [bits_of.get(k, _Bits(32.0)) for k in call.inputs]
            out = _output_bits(call.layer, sources)
            for k in call.outputs:
                bits_of[k] = out
            name = call.path + call.layer.name
            if name in by_name:
                raise ValueError(
                    f"DifferentiableScore: layer {name!r} is called more than once; "
                    "a shared layer's learned bits cannot be counted per call. Use "
                    "one layer per call.")
            by_name[name] = (call, sources)
        self.kernels, self.elementwise = [], []
        for row in report.layers:
            call, sources = by_name.get(row.layer, (None, []))
            if call is None:
                continue
            learned = self._learned_weight(call.layer, row)
            if learned is not None:
                self.kernels.append(_LearnedKernel(row, *learned,
                                                   _Bits.union(sources[:1])))
                continue
            union = _Bits.union(sources)
            if not union.learned:
                continue
            at_construction = max([s.value() for s in sources])
            for count, bits in row.mult_terms:
                # Rules count an element-wise op at max(input bits, 32-bit
                # constants): it follows the inputs iff it equals their max.
                if bits == at_construction and bits < 32.0:
                    self.elementwise.append((float(count), union, row.name))
        params0, ops0 = self._dynamic()
        self.const_param_bits = float(report.param_bits) - float(params0)
        self.const_ops = float(report.ops) - float(ops0)

    @staticmethod
    def _learned_weight(layer, row):
        if not wrapped.is_quantize_wrapper(layer) or row.name != row.layer:
            return None
        if row.kind.split("+")[0].split(":")[0] not in ("conv", "depthwise", "dense"):
            return None
        for w in wrapped.weight_quantizers(layer):
            if _is_learned_weight(w.quantizer) and w.name in wrapped.KERNEL_NAMES:
                return w.weight, w.quantizer, w.variables
        return None

    def _layout(self):
        """Index constants of the vectorized count, built once (numpy).

        Channels of all learned kernels are concatenated (kernel i's channels
        at ``offset_i``); each kernel's gamma and range vector ((C,), or (1,)
        for a per-tensor Dense grid) is concatenated too and gathered to its
        channels. Each kernel's values, flattened, have channel
        ``offset_i + index % C_i`` (channels are the last axis, cin*mult for
        a depthwise kernel). Learned activation quantizers are numbered; each
        input-bits expression (a kernel's input, an element-wise op's inputs)
        is max(its learned quantizers' widest channels..., its constant).
        """
        if getattr(self, "_layout_cache", None) is not None:
            return self._layout_cache
        lay = {}
        seg, rows, spatial, mask, gamma_idx, offsets = [], [], [], [], [], []
        value_channel, lo_b, hi_b = [], [], []
        position = channel = 0
        for i, k in enumerate(self.kernels):
            seg += [i] * k.channels
            rows += [float(k.rows)] * k.channels
            spatial += [k.spatial / 32.0] * k.channels
            mask.append(float(k.rows * k.channels))
            size = int(np.prod(k.variables["gamma"].shape))
            gamma_idx += list(range(position, position + size)) if size == k.channels \
                else [position] * k.channels
            position += size
            offsets.append(channel)
            count = int(np.prod(k.weight.shape))
            value_channel.append(channel + np.arange(count) % k.channels)
            lo_b += [float(k.quantizer.min_bits)] * k.channels
            hi_b += [float(k.quantizer.max_bits)] * k.channels
            channel += k.channels
        lay["seg"] = tf.constant(seg, tf.int32)
        lay["rows"] = tf.constant(rows, tf.float32)
        lay["spatial"] = tf.constant(spatial, tf.float32)
        lay["mask"] = tf.constant(mask, tf.float32)
        lay["gamma_idx"] = tf.constant(gamma_idx, tf.int32)
        lay["channels"] = channel
        lay["value_channel"] = tf.constant(
            np.concatenate(value_channel) if value_channel else np.zeros(0), tf.int32)
        lay["lo_b"], lay["hi_b"] = tf.constant(lo_b), tf.constant(hi_b)
        # learned activation quantizers and the bits expressions that use them
        acts, index = [], {}
        exprs = [k.in_bits for k in self.kernels] + [src for _, src, _ in self.elementwise]
        pairs_e, pairs_q, consts = [], [], []
        for e, bits in enumerate(exprs):
            for q, v in bits.learned:
                if id(v) not in index:
                    index[id(v)] = len(acts)
                    acts.append((q, v))
                pairs_e.append(e)
                pairs_q.append(index[id(v)])
            if bits.const is not None:
                consts.append(float(bits.const))
            else:  # no constant: the learned max alone (or 32 bits without any)
                consts.append(32.0 if not bits.learned else float(np.finfo(np.float32).min))
        a_seg, a_lo, a_hi = [], [], []
        for j, (q, v) in enumerate(acts):
            size = int(np.prod(v["gamma"].shape))
            a_seg += [j] * size
            a_lo += [float(q.min_bits)] * size
            a_hi += [float(q.max_bits)] * size
        lay["acts"] = acts
        lay["a_seg"] = tf.constant(a_seg, tf.int32)
        lay["a_lo"], lay["a_hi"] = tf.constant(a_lo), tf.constant(a_hi)
        lay["pairs_e"] = tf.constant(pairs_e, tf.int32)
        lay["pairs_q"] = tf.constant(pairs_q, tf.int32)
        lay["consts"] = tf.constant(consts, tf.float32)
        # The common case (per-tensor activations, one learned source per
        # expression) needs no max at all: a max over one value is that
        # value, with gradient 1, and the segment maxima's gradients are the
        # costly part of the term's backward (measured), so skip them there.
        lay["one_per_act"] = len(a_seg) == len(acts)
        lay["one_per_expr"] = sorted(pairs_e) == sorted(set(pairs_e))
        lay["expr_learned"] = (None if set(pairs_e) == set(range(len(exprs))) else
                               tf.constant([e in pairs_e for e in range(len(exprs))]))
        lay["expr_source"] = tf.constant(
            [pairs_q[pairs_e.index(e)] if e in pairs_e else 0 for e in range(len(exprs))],
            tf.int32)
        lay["exprs"] = len(exprs)
        lay["counts"] = tf.constant([count / 32.0 for count, _, _ in self.elementwise])
        self._layout_cache = lay
        return lay

    @staticmethod
    def _bits(gamma, lo_b, hi_b):
        """clip(round_ste(8 gamma), min_bits, max_bits), elementwise with
        per-entry bounds: the quantizers' ``bits_tensor`` ops, all at once."""
        return tf.clip_by_value(_round_ste(gamma * 8.0), lo_b, hi_b)

    def _input_bits(self, lay):
        """Every bits expression's value, (E,): max over its learned
        activation quantizers (each at its widest channel) and its constant."""
        if not lay["acts"]:
            return lay["consts"]
        gammas = [tf.reshape(v["gamma"], [-1]) for _, v in lay["acts"]]
        a_bits = self._bits(tf.concat(gammas, 0) if len(gammas) > 1 else gammas[0],
                            lay["a_lo"], lay["a_hi"])
        widest = a_bits if lay["one_per_act"] else tf.math.segment_max(a_bits, lay["a_seg"])
        if lay["one_per_expr"]:
            learned = tf.gather(widest, lay["expr_source"])
            if lay["expr_learned"] is not None:  # no learned source: the constant alone
                learned = tf.where(lay["expr_learned"], learned, np.finfo(np.float32).min)
        else:
            learned = tf.math.unsorted_segment_max(tf.gather(widest, lay["pairs_q"]),
                                                   lay["pairs_e"], lay["exprs"])
        return tf.maximum(learned, lay["consts"])

    def _dynamic(self):
        """(param bits, 32-bit-equivalent ops) of the learned rows, all kernels
        and activations at once: every learned kernel's channels in one
        vector, its values in another (one division, one comparison, one
        segment sum for the nonzeros), every learned activation width in a
        third, so the count is a fixed handful of ops whatever the number of
        layers; per layer only the variables' reads and the kernels' flatten.
        The same elementwise ops as ``bits_tensor``, ``weight_step`` and
        ``nonzeros_per_channel``, so the same values."""
        lay = self._layout()
        params, ops = tf.constant(0.0), tf.constant(0.0)
        in_bits = self._input_bits(lay) if lay["exprs"] else None
        if self.kernels:
            def flat(key):
                parts = [tf.reshape(k.variables[key], [-1]) for k in self.kernels]
                return tf.concat(parts, 0) if len(parts) > 1 else parts[0]
            gather = lay["gamma_idx"]
            bits = self._bits(tf.gather(flat("gamma"), gather), lay["lo_b"], lay["hi_b"])
            # nonzeros of the quantized kernels: |w / s_c| > 0.5 (see
            # nonzeros_per_channel), a count without gradient
            step = tf.stop_gradient(_ops.weight_step(bits, tf.gather(flat("range"), gather))[-1])
            values = []
            for k in self.kernels:
                w = k.weight
                if "sparsity_mask" in k.variables:
                    w = w * k.variables["sparsity_mask"]
                values.append(tf.reshape(w, [-1]))
            values = tf.concat(values, 0) if len(values) > 1 else values[0]
            nonzero = tf.cast(tf.abs(values / tf.gather(step, lay["value_channel"])) > 0.5,
                              tf.float32)
            nnz = tf.math.unsorted_segment_sum(nonzero, lay["value_channel"], lay["channels"])
            seg, rows, spatial, mask = lay["seg"], lay["rows"], lay["spatial"], lay["mask"]
            kernel_in = in_bits[:len(self.kernels)]
            channel_in = tf.gather(kernel_in, seg)
            # storage: the cheaper of dense (n sum b_c) and sparse (sum nnz_c b_c + mask)
            dense = tf.math.segment_sum(bits * rows, seg)
            sparse = tf.math.segment_sum(nnz * bits, seg) + mask
            use_sparse = tf.stop_gradient(sparse < dense)
            params = tf.reduce_sum(tf.where(use_sparse, sparse, dense))
            stored = tf.where(tf.gather(use_sparse, seg), nnz, rows)
            # multiplies at the straight-through max(b_w, b_in); adds at the accumulator
            mults = tf.reduce_sum(stored * soft_max_bits(bits, channel_in) * spatial)
            adds = tf.reduce_sum(tf.maximum(stored - 1.0, 0.0) * spatial) * self.acc_bits
            ops = mults + adds
        if self.elementwise:
            ops = ops + tf.reduce_sum(lay["counts"] * in_bits[len(self.kernels):])
        return params, ops

    def parts(self):
        """(P, F): 32-bit-equivalent params and ops (tensors)."""
        params, ops = self._dynamic()
        return (params + self.const_param_bits) / 32.0, ops + self.const_ops

    def __call__(self):
        with tf.name_scope("micronet_score"):
            params, ops = self.parts()
            return params / self.p_base + ops / self.m_base
