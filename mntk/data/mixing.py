"""Mixup and CutMix on batches, producing soft (mixed one-hot) labels.

Both draw one mixing weight per batch, lambda ~ Beta(alpha, alpha), and pair
every example with a random partner in the same batch (a permutation pi):

- Mixup (Zhang et al., ICLR 2018): x = lambda * x + (1 - lambda) * x[pi],
  y = lambda * y + (1 - lambda) * y[pi].
- CutMix (Yun et al., ICCV 2019): a box of relative side sqrt(1 - lambda),
  centred uniformly at random and clipped to the image, is pasted from x[pi];
  the label weight follows the pasted area A actually kept after clipping:
  y = (1 - A / (H W)) * y + (A / (H W)) * y[pi].

With ``probability`` < 1 a batch is left unmixed with probability
1 - ``probability`` (the CutMix paper's ``cutmix_prob``). Randomness comes
from a per-batch stateless seed, so a pipeline is repeatable from its seed.
"""
import tensorflow as tf

KINDS = ("mixup", "cutmix")


def _beta(seed, alpha):
    """lambda ~ Beta(alpha, alpha) as g1 / (g1 + g2), g ~ Gamma(alpha)."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    g1 = tf.random.stateless_gamma([], s1, alpha=alpha)
    g2 = tf.random.stateless_gamma([], s2, alpha=alpha)
    return g1 / (g1 + g2)


def _draws(seed, alpha, probability, batch):
    s_lam, s_perm, s_apply, s_box = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    lam = _beta(s_lam, alpha)
    apply = tf.random.stateless_uniform([], s_apply) < probability
    lam = tf.where(apply, lam, 1.0)
    perm = tf.random.experimental.stateless_shuffle(tf.range(batch), s_perm)
    return lam, perm, s_box


def mixup_batch(images, labels, seed, alpha: float = 1.0, probability: float = 1.0):
    """Mixup one batch; ``labels`` are float one-hot rows. Returns (x, y)."""
    _check(images, labels, alpha, probability)
    lam, perm, _ = _draws(seed, alpha, probability, tf.shape(images)[0])
    mixed_x = lam * images + (1.0 - lam) * tf.gather(images, perm)
    mixed_y = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
    return mixed_x, mixed_y


def cutmix_box(height, width, lam, seed):
    """(y1, y2, x1, x2) of the CutMix box for weight ``lam``, clipped to the image."""
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=2**30, dtype=tf.int32)
    cy = centre[0] % height
    cx = centre[1] % width
    y1 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y2 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x1 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x2 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return y1, y2, x1, x2


def cutmix_batch(images, labels, seed, alpha: float = 1.0, probability: float = 1.0):
    """CutMix one batch of NHWC images; ``labels`` are float one-hot rows."""
    _check(images, labels, alpha, probability)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    lam, perm, s_box = _draws(seed, alpha, probability, shape[0])
    y1, y2, x1, x2 = cutmix_box(height, width, lam, s_box)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    mask = tf.cast(inside, images.dtype)[None, :, :, None]
    mixed_x = images * (1.0 - mask) + tf.gather(images, perm) * mask
    pasted = tf.cast((y2 - y1) * (x2 - x1), tf.float32) / tf.cast(height * width, tf.float32)
    mixed_y = (1.0 - pasted) * labels + pasted * tf.gather(labels, perm)
    return mixed_x, mixed_y


def mix_batches(ds: tf.data.Dataset, kind: str, alpha: float = 1.0,
                probability: float = 1.0, seed: int = 0) -> tf.data.Dataset:
    """Apply ``"mixup"`` or ``"cutmix"`` to every batch of ``ds``.

    ``ds`` yields batched ``(images, one_hot_labels)``; load the data with
    ``one_hot=True`` (``mntk.data.load(..., mix=kind)`` does both).
    """
    if kind not in KINDS:
        raise ValueError(f"mix={kind!r} is unknown; use one of {KINDS}.")
    label_spec = ds.element_spec[1]
    if label_spec.shape.rank != 2 or not label_spec.dtype.is_floating:
        raise ValueError(
            f"{kind} needs batched float one-hot labels of shape (batch, classes), got "
            f"{label_spec}; load the data with one_hot=True (or pass mix= to "
            "mntk.data.load) and apply it after batching.")
    fn = mixup_batch if kind == "mixup" else cutmix_batch
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda xy, s: fn(xy[0], xy[1], s, alpha, probability),
        num_parallel_calls=tf.data.AUTOTUNE)


def _check(images, labels, alpha, probability):
    if not alpha > 0:
        raise ValueError(f"mixing alpha={alpha!r} must be > 0 (Beta(alpha, alpha)); "
                         "1.0 is the papers' CIFAR setting.")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mixing probability={probability!r} must lie in [0, 1].")
    if labels.shape.rank != 2:
        raise ValueError(f"mixing needs one-hot labels of shape (batch, classes), got "
                         f"shape {labels.shape}; use one_hot=True.")
