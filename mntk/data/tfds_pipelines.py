"""CIFAR-10/100 and ImageNet (ILSVRC-2012) through TensorFlow Datasets.

``tfds.load`` is always called with ``download=False``: mntk never downloads
at run time, and a data set that was not prepared fails at once with the
command that prepares it. Standard augmentation:

- CIFAR (He et al. 2016): zero-pad 4, random 32x32 crop, horizontal flip.
- ImageNet (Szegedy et al. 2015): random-resized crop (8-100% of the area,
  aspect 3/4-4/3) + flip for training; resize to size/0.875 and centre crop
  for evaluation.

Then per-channel ``(x - mean) / std``, batching and ``prefetch(AUTOTUNE)``.
"""
import dataclasses
import os
from typing import Dict, Optional, Tuple

import tensorflow as tf

from mntk.data import augment as aug
from mntk.data.base import DataError, LoadedData, SPLITS, check_image_size, \
    one_hot as to_one_hot, with_options


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    tfds_name: str
    num_classes: int
    native_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    split_names: Dict[str, str]        # mntk split -> tfds split
    split_sizes: Dict[str, int]        # tfds split -> examples
    prepare: str                       # how to prepare the data offline
    shuffle_buffer: int


_CIFAR_PREPARE = ("tfds build {name} --data_dir={data_dir}  (or: python -m "
                  "tensorflow_datasets.scripts.download_and_prepare --datasets={name} "
                  "--data_dir={data_dir}) on a machine with network access, then "
                  "copy the directory over")
# CIFAR has no official validation split: as in the entries, "validation" is the
# test set; pass split_names={"train": "train[:90%]", "validation": "train[90%:]"}
# for a held-out split.
SPECS = {
    "cifar10": TfdsSpec(
        "cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {"train": "train", "validation": "test", "test": "test"},
        {"train": 50000, "test": 10000}, _CIFAR_PREPARE, 10000),
    "cifar100": TfdsSpec(
        "cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        {"train": "train", "validation": "test", "test": "test"},
        {"train": 50000, "test": 10000}, _CIFAR_PREPARE, 10000),
    # ImageNet test labels are not public: "test" is the validation set too.
    "imagenet2012": TfdsSpec(
        "imagenet2012", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        {"train": "train", "validation": "validation", "test": "validation"},
        {"train": 1281167, "validation": 50000},
        "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in MANUAL_DIR, then "
        "tfds build imagenet2012 --data_dir={data_dir} --manual_dir=MANUAL_DIR", 10000),
}


def _load_split(spec: TfdsSpec, tfds_split: str, data_dir, shuffle_files, seed):
    import tensorflow_datasets as tfds
    # ImageNet images stay JPEG bytes until the crop is known (decode_and_crop).
    decoders = ({"image": tfds.decode.SkipDecoding()}
                if spec.native_size > 32 else None)
    if data_dir is not None and not os.path.isdir(os.path.expanduser(str(data_dir))):
        raise DataError(
            f"{spec.tfds_name}: data_dir {str(data_dir)!r} does not exist. Prepare the "
            "data there first: " + spec.prepare.format(name=spec.tfds_name,
                                                       data_dir=data_dir))
    try:
        ds = tfds.load(spec.tfds_name, split=tfds_split, data_dir=data_dir,
                       as_supervised=True, download=False, shuffle_files=shuffle_files,
                       read_config=tfds.ReadConfig(shuffle_seed=seed),
                       decoders=decoders)
    except AssertionError as e:  # tfds signals "not prepared" with an assert
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise DataError(
            f"{spec.tfds_name} is not prepared in data_dir {str(where)!r} ({e}). "
            "mntk never downloads at run time; prepare it with: "
            + spec.prepare.format(name=spec.tfds_name, data_dir=where)) from None
    return ds


def _split_size(spec: TfdsSpec, tfds_split: str, data_dir) -> Optional[int]:
    """Examples in a (possibly sliced) split, from the prepared data set's info."""
    import tensorflow_datasets as tfds
    try:
        info = tfds.builder(spec.tfds_name, data_dir=data_dir).info
        return int(info.splits[tfds_split].num_examples)
    except (KeyError, ValueError, AssertionError):
        # Mock data (tests) has no split metadata; callers then pass
        # steps_per_epoch explicitly.
        return None


def load_tfds(name: str, batch_size: int = 128, split: Optional[str] = None,
              image_size: Optional[int] = None, data_dir: Optional[str] = None,
              augment: Optional[bool] = None, deterministic: bool = False,
              one_hot: bool = False, seed: int = 0, mix: Optional[str] = None,
              mix_alpha: float = 1.0, mix_probability: float = 1.0,
              steps_per_epoch: Optional[int] = None,
              split_names: Optional[Dict[str, str]] = None,
              cache: Optional[bool] = None,
              shuffle_buffer: Optional[int] = None,
              autoaugment=None, pad_fill: float = 0.0) -> LoadedData:
    """Batched pipelines of a TFDS image data set (``cifar10``, ``cifar100``,
    ``imagenet2012``).

    Args:
      batch_size: per-step batch; the training split drops its incomplete
        last batch.
      split: build only this split (``None``: train, validation and test).
      image_size: output side in pixels (default: 32 for CIFAR, 224 for
        ImageNet); CIFAR images are resized (bilinear) after the crop.
      data_dir: the TFDS data directory holding the prepared data set.
      augment: augment the training split (default ``True``).
      deterministic: no shuffling of files or examples, ordered parallel maps;
        augmentation stays seeded. For tests and exact reruns.
      one_hot: float32 one-hot labels (implied by ``mix``).
      mix: ``"mixup"`` / ``"cutmix"`` on training batches (``mntk.data.mixing``).
      steps_per_epoch: training steps per epoch; default: train examples //
        batch_size from the prepared data set's metadata.
      split_names: override the mntk-split -> TFDS-split map (TFDS slicing
        syntax such as ``"train[:90%]"`` works).
      cache: cache decoded examples in memory (default: on for CIFAR).
      shuffle_buffer: examples in the shuffle buffer (default 10000).
      autoaugment: an AutoAugment-style policy applied to training images
        before the crop and flip (``mntk.data.autoaugment``): a name (e.g.
        ``"osi_cifar100"``), a ``Policy``, or a list of them / a set name
        (``"kaist"``): then each epoch holds one copy of the training set per
        policy, each copy augmented by its own policy, shuffled together (the
        KAIST entry's four Fast AutoAugment copies), and ``steps_per_epoch``
        counts all copies.
      pad_fill: pixel value (0..255) of the CIFAR crop padding (KAIST: 128).
    """
    spec = SPECS[name]
    if split is not None and split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}; use one of {SPLITS} or None.")
    is_cifar = name.startswith("cifar")
    size = check_image_size(name, image_size, minimum=8) or spec.native_size
    names = dict(spec.split_names, **(split_names or {}))
    unknown = set(names) - set(SPLITS)
    if unknown:
        raise DataError(f"{name}: split_names has unknown keys {sorted(unknown)}; "
                        f"use {SPLITS}.")
    augment = True if augment is None else bool(augment)
    policies = None
    if autoaugment is not None:
        from mntk.data import autoaugment as autoaugment_lib
        try:
            members = autoaugment_lib.get_many(autoaugment)
        except ValueError as e:
            raise DataError(f"{name}: {e}") from None
        policies = autoaugment_lib.Policy.concat(members)
        if not augment:
            raise DataError(f"{name}: autoaugment={autoaugment!r} needs augment=True "
                            "(the policy is training augmentation).")
    copies = len(policies.ranges) if policies is not None else 1
    cache = is_cifar if cache is None else bool(cache)
    onehot = bool(one_hot) or bool(mix)
    built = {}
    for which in SPLITS:
        if split is not None and which != split:
            continue
        train = which == "train"
        ds = _load_split(spec, names[which], data_dir,
                         shuffle_files=train and not deterministic, seed=seed)
        if cache:
            ds = ds.cache()
        policy = policies if train and augment else None
        buffer = shuffle_buffer or spec.shuffle_buffer
        ds = _copies(ds, copies if policy is not None else 1, train and not deterministic,
                     buffer, seed)
        transform = _transform(spec, size, train and augment, is_cifar, policy, pad_fill)
        ds = aug.with_seeds(ds, seed + SPLITS.index(which)).map(
            lambda xyk, s: (transform(xyk[0], s, xyk[2]), tf.cast(xyk[1], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE)
        if onehot:
            ds = ds.map(lambda im, lab: (im, to_one_hot(lab, spec.num_classes)))
        ds = ds.batch(batch_size, drop_remainder=train)
        if train and mix:
            from mntk.data.mixing import mix_batches
            ds = mix_batches(ds, mix, alpha=mix_alpha, probability=mix_probability,
                             seed=seed + 7)
        built[which] = with_options(ds.prefetch(tf.data.AUTOTUNE), deterministic)

    sizes = {which: (spec.split_sizes.get(names[which]) if names[which] in spec.split_sizes
                     else _split_size(spec, names[which], data_dir))
             for which in SPLITS}
    if steps_per_epoch is None and sizes["train"] is not None:
        steps_per_epoch = copies * sizes["train"] // batch_size
    return LoadedData(
        name=name, num_classes=spec.num_classes, input_shape=(size, size, 3),
        train=built.get("train"), validation=built.get("validation"),
        test=built.get("test"), sizes=sizes, steps_per_epoch=steps_per_epoch,
        mean=spec.mean, std=spec.std)


def _copies(ds, copies: int, shuffle: bool, buffer: int, seed: int):
    """``(image, label, k)`` for k = 0..copies-1: one pass over ``ds`` per copy,
    each shuffled on its own, interleaved at random (in order when not
    shuffling), so an epoch holds every example ``copies`` times."""
    def tagged(k):
        part = ds.shuffle(buffer, seed=seed + 1000 * k, reshuffle_each_iteration=True) \
            if shuffle else ds
        return part.map(lambda x, y: (x, y, tf.constant(k, tf.int32)))
    if copies == 1:
        return tagged(0)
    parts = [tagged(k) for k in range(copies)]
    if shuffle:
        return tf.data.Dataset.sample_from_datasets(parts, seed=seed,
                                                    stop_on_empty_dataset=False,
                                                    rerandomize_each_iteration=True)
    return tf.data.Dataset.choose_from_datasets(
        parts, tf.data.Dataset.range(copies).repeat(), stop_on_empty_dataset=False)


def _transform(spec: TfdsSpec, size: int, augment: bool, is_cifar: bool, policy=None,
               pad_fill: float = 0.0):
    """uint8 image (CIFAR) or JPEG bytes (ImageNet) + [2] seed + copy index ->
    normalized float32 (size, size, 3) image. ``policy`` (an AutoAugment-style
    ``Policy``, member ``k`` for copy k) runs on 0..255 pixels before the crop
    and flip, as the entries ran it on PIL images."""
    def fn(image, seed, copy=0):
        crop_seed, flip_seed = aug.sub_seeds(seed, 2)
        policy_seed = tf.random.experimental.stateless_fold_in(seed, 3)
        if is_cifar:
            if policy is not None:
                image = policy(image, policy_seed, copy) / 255.0
            image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
            if augment:
                image = aug.pad_and_random_crop(image, crop_seed, padding=4,
                                                fill=pad_fill / 255.0)
                image = aug.random_flip(image, flip_seed)
            if size != spec.native_size:
                image = tf.image.resize(image, (size, size), method="bilinear")
        elif augment:
            image = aug.random_resized_crop_jpeg(image, crop_seed, size)
            image = aug.random_flip(image, flip_seed)
            if policy is not None:  # AutoAugment's ImageNet order: after crop and flip
                image = policy(tf.round(image * 255.0), policy_seed, copy) / 255.0
        else:
            image = tf.image.decode_jpeg(image, channels=3)
            image = tf.image.convert_image_dtype(image, tf.float32)
            image = aug.resize_and_center_crop(image, size)
        image = tf.ensure_shape(image, (size, size, 3))
        return aug.normalize(image, spec.mean, spec.std)
    return fn
