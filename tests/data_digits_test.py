"""The bundled digits pipeline: split, scaling, resizing, batching, errors."""
import numpy as np
import pytest

import mntk.data as md



def _bilinear_reference(img, size):
    """Bilinear resize with half-pixel centres and edge clamping (numpy)."""
    h, w = img.shape[:2]
    out = np.zeros((size, size) + img.shape[2:], np.float64)
    for r in range(size):
        for c in range(size):
            y = min(max((r + 0.5) * h / size - 0.5, 0), h - 1)
            x = min(max((c + 0.5) * w / size - 0.5, 0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[r, c] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


def test_split_sizes_stratification_and_scaling():
    arrays = md.digits_arrays()
    sizes = {k: len(v[0]) for k, v in arrays.items()}
    # 1797 images: 20% test (sklearn rounds up: 360), then 1/8 of the rest (180).
    assert sizes == {"train": 1257, "validation": 180, "test": 360}
    for split, (x, y) in arrays.items():
        assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0  # 16/16
        counts = np.bincount(y, minlength=10)
        np.testing.assert_allclose(counts / len(y), 0.1, atol=0.02)  # stratified
    from sklearn.datasets import load_digits
    raw = load_digits()
    # every split image is a raw image / 16, and the splits partition the set
    all_x = np.concatenate([v[0] for v in arrays.values()])[..., 0]
    assert len(all_x) == len(raw.images)
    key = lambda a: a.astype(np.float32).round(4).tobytes()  # noqa: E731
    raw_counts, split_counts = {}, {}
    for img in raw.images / 16.0:
        raw_counts[key(img)] = raw_counts.get(key(img), 0) + 1
    for img in all_x:
        split_counts[key(img)] = split_counts.get(key(img), 0) + 1
    assert raw_counts == split_counts


def test_split_is_seeded():
    a, b = md.digits_arrays(seed=0), md.digits_arrays(seed=0)
    c = md.digits_arrays(seed=1)
    np.testing.assert_array_equal(a["test"][0], b["test"][0])
    assert not np.array_equal(a["test"][0], c["test"][0])


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3)])
def test_upscaling_is_bilinear_and_channels_tile(size, channels):
    native = md.digits_arrays()["test"][0]
    up = md.digits_arrays(image_size=size, channels=channels)["test"][0]
    assert up.shape == (360, size, size, channels)
    for i in (0, 7):
        ref = _bilinear_reference(native[i, :, :, 0], size)
        for ch in range(channels):
            np.testing.assert_allclose(up[i, :, :, ch], ref, atol=1e-5)


def test_load_returns_batched_datasets_matching_arrays():
    data = md.load("digits", batch_size=32, image_size=16, deterministic=True)
    assert data.num_classes == 10 and data.input_shape == (16, 16, 1)
    assert data.steps_per_epoch == 1257 // 32
    train = list(data.train)
    assert len(train) == 1257 // 32                       # last partial batch dropped
    assert all(x.shape == (32, 16, 16, 1) for x, _ in train)
    test = list(data.test)
    assert len(test) == int(np.ceil(360 / 32))            # evaluation keeps every image
    x = np.concatenate([b[0].numpy() for b in test])
    y = np.concatenate([b[1].numpy() for b in test])
    np.testing.assert_array_equal(x, data.x_test)
    np.testing.assert_array_equal(y, data.y_test)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(train[0][0].numpy(), data.x_train[:32])  # no shuffle


def test_training_split_reshuffles_each_epoch_from_a_seed():
    first = md.load("digits", batch_size=64, seed=3).train
    second = md.load("digits", batch_size=64, seed=3).train
    y1 = np.concatenate([y for _, y in first])
    y2 = np.concatenate([y for _, y in second])
    np.testing.assert_array_equal(y1, y2)
    y1_next = np.concatenate([y for _, y in first])
    assert not np.array_equal(y1, y1_next)


def test_one_hot_and_mix_give_float_rows():
    data = md.load("digits", batch_size=16, one_hot=True, split="test")
    assert data.train is None and data.validation is None
    _, y = next(iter(data.test))
    assert y.shape == (16, 10)
    np.testing.assert_array_equal(np.argmax(y, 1), data.y_test[:16])
    mixed = md.load("digits", batch_size=16, image_size=16, mix="cutmix")
    _, y = next(iter(mixed.train))
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, rtol=1e-6)
    _, y_val = next(iter(mixed.validation))
    assert y_val.shape == (16, 10)                        # every split one-hot


def test_augment_translates_by_at_most_size_over_8():
    data = md.load("digits", batch_size=8, image_size=16, augment=True,
                   deterministic=True, split="train")
    x_aug = next(iter(data.train))[0].numpy()
    original = data.x_train[:8]
    shift = 2
    moved = 0
    for a, o in zip(x_aug, original):
        padded = np.pad(o, ((shift, shift), (shift, shift), (0, 0)))
        matches = [(dy, dx) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)
                   if np.allclose(padded[dy:dy + 16, dx:dx + 16], a)]
        assert matches, "augmented image is not a translation of the original"
        moved += (shift, shift) not in matches
    assert moved > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "val"}, "unknown split"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": 12.5}, "image_size"),
    ({"channels": 2}, "channels"),
    ({"batch_size": 5000}, "batch_size"),
    ({"data_dir": "/tmp"}, "does not take"),
])
def test_errors(kwargs, match):
    with pytest.raises(md.DataError, match=match):
        md.load("digits", **kwargs)


def test_unknown_name_lists_known_ones():
    with pytest.raises(md.DataError, match="cifar100.*imagenet2012"):
        md.load("mnist")


def test_check_compatible_names_both_shapes():
    from mntk.models import digits_cnn
    model = digits_cnn((16, 16, 1))
    md.check_compatible(model, (16, 16, 1))
    with pytest.raises(md.DataError, match=r"\(16, 16, 1\).*\(8, 8, 1\)"):
        md.check_compatible(model, (8, 8, 1))


def test_arrays_of_in_memory_split():
    data = md.load("digits", batch_size=32, split="test")
    x, y = data.arrays("train", max_examples=10)
    np.testing.assert_array_equal(x, data.x_train[:10])
    np.testing.assert_array_equal(y, data.y_train[:10])
