"""Mixup / CutMix against numpy reasoning on distinguishable batches."""
import numpy as np
import pytest
import tensorflow as tf

from mntk.data import mixing

BATCH, SIZE, CLASSES = 8, 12, 10


def _batch():
    # Example i is the constant image i + 1 with label i: every output pixel
    # tells which example it came from.
    images = np.stack([np.full((SIZE, SIZE, 3), i + 1.0, np.float32) for i in range(BATCH)])
    labels = np.eye(CLASSES, dtype=np.float32)[np.arange(BATCH)]
    return tf.constant(images), tf.constant(labels)


def _seed(k):
    return tf.constant([k, 17], tf.int64)


@pytest.mark.parametrize("k", range(6))
def test_mixup_is_convex_combination_with_matching_labels(k):
    images, labels = _batch()
    x, y = (t.numpy() for t in mixing.mixup_batch(images, labels, _seed(k), alpha=0.4))
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    lams = []
    for i in range(BATCH):
        # y_i = lam * e_i + (1 - lam) * e_j  and  x_i = lam * (i+1) + (1 - lam) * (j+1)
        expected_value = np.sum(y[i] * (np.arange(CLASSES) + 1.0))
        np.testing.assert_allclose(x[i], expected_value, rtol=1e-5)
        others = [c for c in np.nonzero(y[i] > 1e-6)[0] if c != i]
        lams.append(y[i, i])
        assert len(others) <= 1
    # one lambda per batch (unless the partner is the example itself)
    partnered = [l for i, l in enumerate(lams) if y[i, i] < 1 - 1e-6]
    assert np.ptp(partnered) < 1e-5 if partnered else True


@pytest.mark.parametrize("k", range(8))
def test_cutmix_label_mass_equals_pasted_area(k):
    images, labels = _batch()
    x, y = (t.numpy() for t in mixing.cutmix_batch(images, labels, _seed(k), alpha=1.0))
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    partner_of = {}
    for i in range(BATCH):
        values = x[i, :, :, 0]
        pasted = values != i + 1
        if pasted.any():
            source = np.unique(values[pasted])
            assert len(source) == 1  # one partner per example
            partner_of[i] = int(source[0]) - 1
            np.testing.assert_allclose(y[i, partner_of[i]], pasted.mean(), atol=1e-6)
            np.testing.assert_allclose(y[i, i], 1 - pasted.mean(), atol=1e-6)
            rows, cols = np.nonzero(pasted)
            # the pasted region is a full rectangle, the same box for every example
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert np.all(x[i] == x[i, :, :, :1])  # same box on every channel
    # partners form (part of) a permutation: no source used twice
    assert len(set(partner_of.values())) == len(partner_of)


def test_mixing_weight_is_beta_distributed():
    # Beta(1, 1) is uniform: mean 1/2, variance 1/12 (numpy reference on 400 draws).
    lam = np.array([float(mixing._beta(_seed(k), 1.0)) for k in range(400)])
    assert abs(lam.mean() - 0.5) < 0.05
    assert abs(lam.var() - 1 / 12) < 0.02


@pytest.mark.parametrize("fn", [mixing.mixup_batch, mixing.cutmix_batch])
def test_probability_zero_leaves_batch_unchanged(fn):
    images, labels = _batch()
    x, y = fn(images, labels, _seed(3), alpha=1.0, probability=0.0)
    np.testing.assert_array_equal(x.numpy(), images.numpy())
    np.testing.assert_array_equal(y.numpy(), labels.numpy())


def test_mix_batches_is_seeded_and_rerandomized_per_epoch():
    images, labels = _batch()
    base = tf.data.Dataset.from_tensors((images, labels)).repeat(3)

    def epoch(ds):
        return [y.numpy() for _, y in ds]

    first = mixing.mix_batches(base, "cutmix", seed=5)
    second = mixing.mix_batches(base, "cutmix", seed=5)
    a, b = epoch(first), epoch(second)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))   # same seed, same run
    again = epoch(first)                                      # next epoch differs
    assert not np.array_equal(np.stack(a), np.stack(again))
    assert not np.array_equal(a[0], a[1])                     # batches differ


def test_errors_name_the_problem():
    images, labels = _batch()
    sparse = tf.data.Dataset.from_tensors((images, tf.range(BATCH)))
    with pytest.raises(ValueError, match="one_hot=True"):
        mixing.mix_batches(sparse, "mixup")
    with pytest.raises(ValueError, match="unknown"):
        mixing.mix_batches(tf.data.Dataset.from_tensors((images, labels)), "mixmatch")
    with pytest.raises(ValueError, match="alpha"):
        mixing.mixup_batch(images, labels, _seed(0), alpha=0.0)
