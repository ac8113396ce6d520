"""What every mntk data loader returns, and the errors they raise."""
import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data set cannot be loaded as asked (name, split, size, location)."""


@dataclasses.dataclass
class LoadedData:
    """Batched ``tf.data`` pipelines of one data set, with what models need.

    Attributes:
      name: data set name (``mntk.data.names()``).
      num_classes: number of classes.
      input_shape: ``(H, W, C)`` of one example as the model receives it.
      train, validation, test: batched datasets of ``(images, labels)``
        (``None`` for splits not built). Labels are sparse ``int32`` or
        ``float32`` one-hot / mixed rows of length ``num_classes``.
      sizes: examples per split (``None`` where unknown, e.g. mock data).
      steps_per_epoch: training batches per epoch (``None`` if unknown).
      train_arrays, validation_arrays, test_arrays: ``(x, y)`` numpy arrays,
        preprocessed exactly like the datasets (before augmentation) with
        sparse labels, for small in-memory data sets (``None`` otherwise).
      mean, std: per-channel normalization applied (``None`` if none).
    """
    name: str
    num_classes: int
    input_shape: Tuple[int, int, int]
    train: Optional[tf.data.Dataset] = None
    validation: Optional[tf.data.Dataset] = None
    test: Optional[tf.data.Dataset] = None
    sizes: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)
    steps_per_epoch: Optional[int] = None
    train_arrays: Optional[Tuple[np.ndarray, np.ndarray]] = None
    validation_arrays: Optional[Tuple[np.ndarray, np.ndarray]] = None
    test_arrays: Optional[Tuple[np.ndarray, np.ndarray]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def dataset(self, split: str) -> tf.data.Dataset:
        """The dataset of ``split``; error if it was not built."""
        if split not in SPLITS:
            raise DataError(f"{self.name}: unknown split {split!r}; use one of {SPLITS}.")
        ds = getattr(self, split)
        if ds is None:
            raise DataError(f"{self.name}: split {split!r} was not built; call "
                            f"mntk.data.load({self.name!r}, ...) without split= to get all.")
        return ds

    def arrays(self, split: str, max_examples: Optional[int] = None):
        """``(x, y)`` numpy arrays of ``split`` with sparse int labels.

        In-memory sets return their arrays; streamed ones (CIFAR, ImageNet)
        read batches of the split's dataset until ``max_examples`` (all if
        ``None``): for TFLite representative data and parity checks. One-hot
        or mixed labels come back as their argmax.
        """
        stored = getattr(self, f"{split}_arrays", None) if split in SPLITS else None
        if stored is not None:
            x, y = stored
            return x[:max_examples], y[:max_examples]
        xs, ys, count = [], [], 0
        for images, labels in self.dataset(split):
            labels = labels.numpy()
            xs.append(images.numpy())
            ys.append(labels.argmax(-1) if labels.ndim == 2 else labels)
            count += len(labels)
            if max_examples is not None and count >= max_examples:
                break
        if not xs:
            raise DataError(f"{self.name}: split {split!r} yielded no examples.")
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
        return x[:max_examples], y[:max_examples]

    def _array(self, split, index):
        arrays = getattr(self, f"{split}_arrays")
        return None if arrays is None else arrays[index]

    x_train = property(lambda self: self._array("train", 0))
    y_train = property(lambda self: self._array("train", 1))
    x_val = property(lambda self: self._array("validation", 0))
    y_val = property(lambda self: self._array("validation", 1))
    x_test = property(lambda self: self._array("test", 0))
    y_test = property(lambda self: self._array("test", 1))


def check_image_size(name: str, image_size, minimum: int = 1) -> Optional[int]:
    """Validate a requested square image size (``None`` keeps the native one)."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < minimum:
        raise DataError(f"{name}: image_size={image_size!r} is not usable; give an "
                        f"integer >= {minimum} (or None for the native size).")
    return int(image_size)


def check_compatible(model, input_shape) -> None:
    """Raise if ``model`` cannot take images of ``input_shape`` ``(H, W, C)``.

    Compares against the model's declared input shape (``None`` dimensions
    accept anything), so a mismatch fails before training, naming both shapes.
    """
    expected = tuple(model.input_shape[1:])
    got = tuple(int(d) for d in input_shape)
    if len(expected) != len(got) or any(
            e is not None and e != g for e, g in zip(expected, got)):
        raise DataError(
            f"model {model.name!r} takes inputs of shape {expected} but the data gives "
            f"{got}; set the data's image_size/channels to match, or build the model "
            f"with input_shape={got}.")


def one_hot(labels, num_classes: int):
    """Sparse integer labels -> float32 one-hot rows (a tf op for pipelines)."""
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)


def with_options(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.with_options(options)
