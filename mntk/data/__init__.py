"""Input pipelines: bundled digits, CIFAR-10/100 and ImageNet via TFDS, mixing.

Front door::

    data = mntk.data.load("cifar100", batch_size=128, data_dir="~/tfds")
    model.fit(data.train, validation_data=data.validation, ...)

``load`` returns a ``LoadedData`` (datasets per split, ``num_classes``,
``input_shape``, sizes, ``steps_per_epoch``, and numpy arrays for small
in-memory sets such as digits).
"""
import inspect

from mntk.data.base import DataError, LoadedData, SPLITS, check_compatible
from mntk.data.digits import digits, digits_arrays
from mntk.data.mixing import cutmix_batch, mix_batches, mixup_batch
from mntk.data.tfds_pipelines import SPECS as TFDS_SPECS, load_tfds

__all__ = ["load", "names", "digits", "digits_arrays", "cifar10", "cifar100",
           "imagenet2012", "mix_batches", "mixup_batch", "cutmix_batch",
           "check_compatible", "DataError", "LoadedData", "SPLITS", "TFDS_SPECS"]


def cifar10(batch_size: int = 128, **kwargs) -> LoadedData:
    """CIFAR-10 (TFDS ``cifar10``); see ``load_tfds`` for the arguments."""
    return load_tfds("cifar10", batch_size, **kwargs)


def cifar100(batch_size: int = 128, **kwargs) -> LoadedData:
    """CIFAR-100 (TFDS ``cifar100``); see ``load_tfds`` for the arguments."""
    return load_tfds("cifar100", batch_size, **kwargs)


def imagenet2012(batch_size: int = 256, **kwargs) -> LoadedData:
    """ILSVRC-2012 (TFDS ``imagenet2012``, manual download); see ``load_tfds``."""
    return load_tfds("imagenet2012", batch_size, **kwargs)


_LOADERS = {"digits": digits, "cifar10": cifar10, "cifar100": cifar100,
            "imagenet2012": imagenet2012}


def names():
    """Names ``load`` knows."""
    return tuple(_LOADERS)


def load(name: str, batch_size: int = 32, split=None, **kwargs) -> LoadedData:
    """Load data set ``name`` as batched ``tf.data`` pipelines.

    Args:
      name: one of ``names()``: ``digits`` (bundled, 8x8), ``cifar10``,
        ``cifar100``, ``imagenet2012`` (TFDS, prepared offline).
      batch_size: examples per batch.
      split: ``"train"``, ``"validation"`` or ``"test"`` to build only one;
        ``None`` builds all.
      **kwargs: the loader's options: ``image_size``, ``augment``,
        ``deterministic``, ``one_hot``, ``seed``, ``mix``, ``mix_alpha``,
        ``mix_probability``, ``steps_per_epoch``; digits also ``channels``,
        ``fractions``; TFDS sets also ``data_dir``, ``split_names``,
        ``cache``, ``shuffle_buffer``, ``autoaugment`` (a policy of
        ``mntk.data.autoaugment``, or a list / set name such as ``"kaist"``
        for one copy of the data per policy per epoch), ``pad_fill``.

    Raises:
      DataError: unknown name or split, an option the data set does not take,
        an unusable image size, or TFDS data that is missing or unprepared
        (the message says how to prepare it).
    """
    if name not in _LOADERS:
        raise DataError(f"Unknown data set {name!r}; known: {', '.join(names())}.")
    loader = _LOADERS[name]
    accepted = set(inspect.signature(loader if name == "digits" else load_tfds).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise DataError(
            f"data set {name!r} does not take option(s) {unknown}; it takes "
            f"{', '.join(sorted(accepted - {'name', 'batch_size', 'split'}))}.")
    return loader(batch_size=batch_size, split=split, **kwargs)
