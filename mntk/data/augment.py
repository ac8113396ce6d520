"""Per-example image augmentation with stateless, seeded random ops.

Every random choice is drawn from a per-example seed that comes from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so a
pipeline is repeatable from its seed (same augmentation in two runs) yet
differs from epoch to epoch, and parallel ``map`` cannot reorder randomness.
"""
import tensorflow as tf


def with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Zip each element with a fresh ``[2]`` int64 seed: ``(element, seed)``."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def sub_seeds(seed, n: int):
    """``n`` independent ``[2]`` seeds split from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def pad_and_random_crop(image, seed, padding: int, fill: float = 0.0):
    """Pad ``padding`` pixels per side with ``fill`` (0 by default), then crop
    back at a random place.

    The CIFAR augmentation of He et al. (2016) with padding 4 (the KAIST entry
    padded with grey, torchvision ``RandomCrop(32, 4, fill=128)``).
    """
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]],
                    constant_values=tf.cast(fill, image.dtype))
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def random_flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def random_resized_crop(image, seed, size: int, area_range=(0.08, 1.0),
                        aspect_ratio_range=(3 / 4, 4 / 3)):
    """Inception-style crop (Szegedy et al. 2015): a random box covering
    ``area_range`` of the image with an aspect ratio in ``aspect_ratio_range``,
    resized (bilinear) to ``size`` x ``size``."""
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, box_size)
    return tf.image.resize(crop, (size, size), method="bilinear")


def random_resized_crop_jpeg(encoded, seed, size: int, area_range=(0.08, 1.0),
                             aspect_ratio_range=(3 / 4, 4 / 3)):
    """``random_resized_crop`` on JPEG bytes, decoding only the chosen window
    (``decode_and_crop_jpeg``): far cheaper than decoding the whole image."""
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], box_size[0], box_size[1]])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    crop = tf.image.convert_image_dtype(crop, tf.float32)
    return tf.image.resize(crop, (size, size), method="bilinear")


def resize_and_center_crop(image, size: int, crop_fraction: float = 0.875):
    """Evaluation transform: resize the shorter side to ``size / crop_fraction``
    and cut the central ``size`` x ``size`` square (the 224/256 convention)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    new_hw = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    new_hw = tf.maximum(new_hw, size)
    image = tf.image.resize(image, new_hw, method="bilinear")
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    return tf.slice(image, tf.stack([top, left, 0]), tf.stack([size, size, -1]))


def normalize(image, mean, std):
    """Per-channel ``(x - mean) / std`` on images in [0, 1]."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
