"""CIFAR / ImageNet pipelines on tfds mock data (nothing is ever downloaded)."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import mntk.data as md
from mntk.data import augment as aug
from mntk.data.tfds_pipelines import SPECS

N = 12


@pytest.fixture
def mock():
    with tfds.testing.mock_data(num_examples=N):
        yield


def _raw(name, split):
    ds = tfds.load(name, split=split, as_supervised=True, download=False,
                   shuffle_files=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(xs), np.array(ys)


def _unnormalize(x, name):
    spec = SPECS[name]
    return x * np.array(spec.std, np.float32) + np.array(spec.mean, np.float32)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_eval_pipeline_is_normalized_raw_data(mock, name):
    data = md.load(name, batch_size=5, deterministic=True, split="test")
    assert data.num_classes == SPECS[name].num_classes and data.input_shape == (32, 32, 3)
    batches = list(data.test)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]   # eval keeps the remainder
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    raw_x, raw_y = _raw(name, "test")
    spec = SPECS[name]
    expected = (raw_x / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    np.testing.assert_array_equal(y, raw_y)
    assert batches[0][1].dtype == tf.int32


def test_cifar_augmentation_is_pad4_crop_and_flip(mock):
    data = md.load("cifar100", batch_size=N, deterministic=True, split="train")
    x = _unnormalize(next(iter(data.train))[0].numpy(), "cifar100")
    raw_x, _ = _raw("cifar100", "train")
    flips = shifts = 0
    for a, o in zip(x, raw_x / 255.0):
        padded = np.pad(o, ((4, 4), (4, 4), (0, 0)))
        found = [(dy, dx, f) for f in (False, True) for dy in range(9) for dx in range(9)
                 if np.allclose((padded[:, ::-1] if f else padded)[dy:dy + 32, dx:dx + 32],
                                a, atol=1e-4)]
        assert found, "not a crop of the 4-padded (possibly flipped) image"
        flips += all(f for _, _, f in found)
        shifts += all((dy, dx) != (4, 4) for dy, dx, _ in found)
    assert 0 < flips < N and shifts > 0


def test_deterministic_mode_repeats_exactly(mock):
    runs = [np.concatenate([x.numpy() for x, _ in
                            md.load("cifar10", batch_size=4, deterministic=True,
                                    split="train", seed=1).train]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_train_split_drops_remainder_and_counts_steps(mock):
    data = md.load("cifar100", batch_size=5, split="train")
    assert [x.shape[0] for x, _ in data.train] == [5, 5]
    # steps come from the real split size (metadata), not the mock's 12
    assert data.sizes["train"] == 50000 and data.steps_per_epoch == 50000 // 5
    assert md.load("cifar100", batch_size=5, split="train",
                   steps_per_epoch=2).steps_per_epoch == 2


def test_cifar_resize_and_mix(mock):
    data = md.load("cifar100", batch_size=4, image_size=48, mix="mixup", split=None)
    assert data.input_shape == (48, 48, 3)
    x, y = next(iter(data.train))
    assert x.shape == (4, 48, 48, 3) and y.shape == (4, 100)
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, rtol=1e-6)
    _, y_test = next(iter(data.test))
    assert y_test.shape == (4, 100)


def test_imagenet_shapes(mock):
    data = md.load("imagenet2012", batch_size=3, image_size=64, deterministic=True)
    assert data.input_shape == (64, 64, 3) and data.num_classes == 1000
    for split in ("train", "validation"):
        x, y = next(iter(data.dataset(split)))
        assert x.shape == (3, 64, 64, 3)
        assert np.all((y.numpy() >= 0) & (y.numpy() < 1000))
        pixels = _unnormalize(x.numpy(), "imagenet2012")
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_center_crop_reference():
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    # shorter side 40 = 35 / 0.875: no resize, then the central 35x35 square
    out = aug.resize_and_center_crop(tf.constant(img), 35).numpy()
    np.testing.assert_allclose(out, img[2:37, 7:42], atol=1e-5)


def test_random_resized_crop_covers_a_box():
    img = np.arange(64 * 64, dtype=np.float32).reshape(64, 64, 1)
    img = np.repeat(img, 3, -1)
    out = aug.random_resized_crop(tf.constant(img), tf.constant([1, 2], tf.int64), 32).numpy()
    assert out.shape == (32, 32, 3)
    assert img.min() <= out.min() and out.max() <= img.max()
    assert out.std() > 0


def test_unprepared_data_says_how_to_prepare(tmp_path):
    with pytest.raises(md.DataError, match="tfds build cifar100 --data_dir=") as e:
        md.load("cifar100", data_dir=str(tmp_path))
    assert "never downloads" in str(e.value)
    with pytest.raises(md.DataError, match="does not exist.*tfds build"):
        md.load("cifar10", data_dir=str(tmp_path / "missing"))
    with pytest.raises(md.DataError, match="manual_dir"):
        md.load("imagenet2012", data_dir=str(tmp_path))


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 4}, "image_size"),
    ({"split": "val"}, "unknown split"),
    ({"split_names": {"holdout": "train[:10%]"}}, "split_names"),
    ({"channels": 3}, "does not take"),
])
def test_option_errors(kwargs, match):
    with pytest.raises(md.DataError, match=match):
        md.load("cifar100", **kwargs)


def test_split_names_override_the_split_map(mock):
    # (mock data ignores slicing such as "train[:90%]", so map to a whole split)
    data = md.load("cifar10", batch_size=N, deterministic=True, split="validation",
                   split_names={"validation": "train"})
    x = next(iter(data.validation))[0].numpy()
    raw_train, _ = _raw("cifar10", "train")
    np.testing.assert_allclose(_unnormalize(x, "cifar10"), raw_train / 255.0, atol=1e-5)
    assert data.sizes["validation"] == 50000


def test_arrays_materialize_a_streamed_split(mock):
    data = md.load("cifar100", batch_size=5, deterministic=True, split="test", one_hot=True)
    x, y = data.arrays("test", max_examples=7)
    assert x.shape == (7, 32, 32, 3) and y.shape == (7,) and y.dtype == np.int32
    _, raw_y = _raw("cifar100", "test")
    np.testing.assert_array_equal(y, raw_y[:7])
    with pytest.raises(md.DataError, match="not built"):
        data.arrays("train")


def test_imagenet_eval_is_center_crop_of_decoded_image(mock):
    data = md.load("imagenet2012", batch_size=2, image_size=24, deterministic=True,
                   split="validation")
    x = _unnormalize(next(iter(data.validation))[0].numpy(), "imagenet2012")
    # (mock pixels are noise, which JPEG does not preserve: decode the same bytes)
    raw = tfds.load("imagenet2012", split="validation", as_supervised=True,
                    download=False, shuffle_files=False,
                    decoders={"image": tfds.decode.SkipDecoding()})
    first = tf.image.decode_jpeg(next(iter(raw))[0], channels=3).numpy()
    expected = aug.resize_and_center_crop(tf.constant(first / 255.0, tf.float32), 24)
    np.testing.assert_allclose(x[0], expected.numpy(), atol=1e-4)


def test_jpeg_crop_matches_crop_of_decoded_image():
    img = (np.random.default_rng(1).random((40, 30, 3)) * 255).astype(np.uint8)
    encoded = tf.io.encode_jpeg(tf.constant(img), quality=100)
    seed = tf.constant([4, 2], tf.int64)
    decoded = tf.image.convert_image_dtype(tf.image.decode_jpeg(encoded), tf.float32)
    np.testing.assert_allclose(aug.random_resized_crop_jpeg(encoded, seed, 16).numpy(),
                               aug.random_resized_crop(decoded, seed, 16).numpy(),
                               atol=1e-5)
