"""scikit-learn's bundled 8x8 handwritten digits as tf.data pipelines.

1,797 grey images of 10 classes (the UCI "optdigits" test set) that ship
with scikit-learn, so the demo and the tests need no download. The split is
stratified and seeded (default 70/10/20 -> 1257/180/360 images); pixel
values 0..16 are scaled to [0, 1]; images can be upscaled (bilinear) so that
bigger recipes' models can take them, and tiled to 3 channels.
"""
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from mntk.data import augment as aug
from mntk.data.base import DataError, LoadedData, SPLITS, check_image_size, \
    one_hot as to_one_hot, with_options

NUM_CLASSES = 10
NATIVE_SIZE = 8


def digits_arrays(image_size: Optional[int] = None, channels: int = 1, seed: int = 0,
                  fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2)):
    """``{split: (x, y)}`` numpy arrays: x float32 (N, S, S, channels) in [0, 1],
    y int32 (N,). Deterministic for a given ``seed`` and ``fractions``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = check_image_size("digits", image_size, minimum=1) or NATIVE_SIZE
    if channels not in (1, 3):
        raise DataError(f"digits: channels={channels!r}; use 1 (grey) or 3 (tiled RGB).")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"digits: split fractions {tuple(fractions)} must be three "
                        "positive numbers summing to 1 (train, validation, test).")
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=fractions[2], random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=fractions[1] / (fractions[0] + fractions[1]),
        random_state=seed, stratify=y_rest)
    out = {}
    for split, (xs, ys) in zip(SPLITS, ((x_train, y_train), (x_val, y_val),
                                        (x_test, y_test))):
        if size != NATIVE_SIZE:
            # Bilinear resizing keeps values within [0, 1] (convex combinations).
            xs = tf.image.resize(xs, (size, size), method="bilinear").numpy()
        if channels == 3:
            xs = np.repeat(xs, 3, axis=-1)
        out[split] = (np.ascontiguousarray(xs, dtype=np.float32), ys)
    return out


def digits(batch_size: int = 32, split: Optional[str] = None,
           image_size: Optional[int] = None, channels: int = 1,
           augment: Optional[bool] = None, deterministic: bool = False,
           one_hot: bool = False, seed: int = 0,
           fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2),
           mix: Optional[str] = None, mix_alpha: float = 1.0,
           mix_probability: float = 1.0, steps_per_epoch: Optional[int] = None
           ) -> LoadedData:
    """The digits data set as batched pipelines plus its numpy arrays.

    Args:
      batch_size: examples per batch (the training split drops its last
        incomplete batch so every step has the same shape).
      split: build only this split (``"train"``, ``"validation"``, ``"test"``);
        ``None`` builds all three. Arrays are always returned for all.
      image_size: upscale to ``image_size`` x ``image_size`` (bilinear); ``None``
        keeps 8x8.
      channels: 1, or 3 to tile the grey image into RGB.
      augment: random translation by up to ``size // 8`` pixels (zero padding
        and random crop; no flips, digits are not mirror-symmetric) on the
        training split. Default ``False``: the demo reaches >= 95% without it.
      deterministic: no shuffling and a fixed element order (for tests); the
        augmentation is seeded either way.
      one_hot: float32 one-hot labels instead of sparse int32.
      mix: ``"mixup"`` or ``"cutmix"`` on training batches (implies one-hot
        labels on every split); see ``mntk.data.mixing``.
      steps_per_epoch: override the number of training steps per epoch.
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"digits: unknown split {split!r}; use one of {SPLITS} or None.")
    arrays = digits_arrays(image_size, channels, seed, fractions)
    size = arrays["train"][0].shape[1]
    onehot = bool(one_hot) or bool(mix)
    built = {}
    for name in SPLITS:
        if split is not None and name != split:
            continue
        x, y = arrays[name]
        train = name == "train"
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if train and not deterministic:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if train and augment:
            shift = max(1, size // 8)
            ds = aug.with_seeds(ds, seed).map(
                lambda xy, s: (aug.pad_and_random_crop(xy[0], s, shift), xy[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
        if onehot:
            ds = ds.map(lambda im, lab: (im, to_one_hot(lab, NUM_CLASSES)))
        ds = ds.batch(batch_size, drop_remainder=train)
        if train and mix:
            from mntk.data.mixing import mix_batches
            ds = mix_batches(ds, mix, alpha=mix_alpha, probability=mix_probability,
                             seed=seed + 1)
        built[name] = with_options(ds.prefetch(tf.data.AUTOTUNE), deterministic)
    n_train = len(arrays["train"][0])
    if n_train < batch_size and (split in (None, "train")):
        raise DataError(f"digits: batch_size={batch_size} exceeds the {n_train} training "
                        "images; lower the batch size.")
    return LoadedData(
        name="digits", num_classes=NUM_CLASSES, input_shape=(size, size, channels),
        train=built.get("train"), validation=built.get("validation"),
        test=built.get("test"), sizes={k: len(v[0]) for k, v in arrays.items()},
        steps_per_epoch=steps_per_epoch or n_train // batch_size,
        train_arrays=arrays["train"], validation_arrays=arrays["validation"],
        test_arrays=arrays["test"])
