"""Input cost of the entries' AutoAugment-style policies (issue 13).

autoaugment_throughput: CIFAR-sized images per second through a ``tf.data``
map of the KAIST four-policy table and of OSI's policy (each followed by the
pad-crop-flip), beside the plain pad-crop-flip map, on this machine's cores
(AUTOTUNE). The cost of the global-pruning masks per step is in
``benchmarks/recipes.py``.
"""
import time

import numpy as np


def _images_per_second(fn, n=4096, seed=0):
    import tensorflow as tf
    from mntk.data import augment as aug
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(512, 32, 32, 3)).astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(images).repeat()
    ds = aug.with_seeds(ds, seed).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(128).prefetch(tf.data.AUTOTUNE)
    it = iter(ds)
    next(it)  # trace and warm up
    start = time.perf_counter()
    for _ in range(n // 128):
        next(it)
    return n / (time.perf_counter() - start)


def bench_autoaugment_throughput():
    import tensorflow as tf
    from mntk.data import augment as aug
    from mntk.data import autoaugment as aa

    def plain(image, seed):
        crop, flip = aug.sub_seeds(seed, 2)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return aug.random_flip(aug.pad_and_random_crop(image, crop, 4), flip)

    kaist = aa.Policy.concat(aa.get_many("kaist"))
    osi = aa.get("osi_cifar100")
    out = [{"name": "plain_crop_flip", "value": _images_per_second(plain),
            "unit": "images/s"}]
    for name, policy in (("kaist_4_policies", kaist), ("osi_cifar100", osi)):
        def fn(image, seed, policy=policy):
            which = tf.random.stateless_uniform([], seed, 0, len(policy.ranges), tf.int32)
            return plain(tf.cast(policy(image, seed, which), tf.uint8), seed)
        out.append({"name": name, "value": _images_per_second(fn), "unit": "images/s"})
    return out
