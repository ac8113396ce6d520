"""mntk.data.image_ops against PIL on fixed images, the entries' policy tables,
the policy sampler's probabilities, and the pipeline's policy copies."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from mntk.data import autoaugment as aa
from mntk.data import image_ops as ops

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(24, 30, 3)).astype(np.uint8)      # H != W
DULL = (IMAGE // 3 + 40).astype(np.uint8)                             # for autocontrast
GREY = (128, 128, 128)


def _pil(array):
    return Image.fromarray(np.asarray(array, np.uint8))


def _affine(image, matrix, resample=Image.NEAREST, fill=None):
    return image.transform(image.size, Image.AFFINE, matrix, resample, fillcolor=fill)


def _cutout_ref(image, v, cx, cy):
    w, h = image.size
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    out = image.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), (125, 123, 114))
    return out


CASES = {
    "shear_x": (lambda x: ops.shear_x(x, 0.17), lambda i: _affine(i, (1, 0.17, 0, 0, 1, 0))),
    "shear_y_neg": (lambda x: ops.shear_y(x, -0.29), lambda i: _affine(i, (1, 0, 0, -0.29, 1, 0))),
    "translate_x_grey": (lambda x: ops.translate_x(x, 5.4, 128),
                         lambda i: _affine(i, (1, 0, 5.4, 0, 1, 0), fill=GREY)),
    "translate_y_neg": (lambda x: ops.translate_y(x, -9.7),
                        lambda i: _affine(i, (1, 0, 0, 0, 1, -9.7))),
    "rotate": (lambda x: ops.rotate(x, 13.3), lambda i: i.rotate(13.3)),
    "rotate_neg": (lambda x: ops.rotate(x, -27.0), lambda i: i.rotate(-27.0)),
    "color": (lambda x: ops.color(x, 0.3), lambda i: ImageEnhance.Color(i).enhance(0.3)),
    "contrast": (lambda x: ops.contrast(x, 1.7), lambda i: ImageEnhance.Contrast(i).enhance(1.7)),
    "brightness": (lambda x: ops.brightness(x, 1.45),
                   lambda i: ImageEnhance.Brightness(i).enhance(1.45)),
    "sharpness": (lambda x: ops.sharpness(x, 0.1),
                  lambda i: ImageEnhance.Sharpness(i).enhance(0.1)),
    "sharpness_up": (lambda x: ops.sharpness(x, 1.9),
                     lambda i: ImageEnhance.Sharpness(i).enhance(1.9)),
    "equalize": (lambda x: ops.equalize(x), ImageOps.equalize),
    "invert": (lambda x: ops.invert(x), ImageOps.invert),
    "solarize": (lambda x: ops.solarize(x, 180.5), lambda i: ImageOps.solarize(i, 180.5)),
    "posterize": (lambda x: ops.posterize(x, 5), lambda i: ImageOps.posterize(i, 5)),
    "cutout": (lambda x: ops.cutout(x, 6.4, (3.2, 20.7)), lambda i: _cutout_ref(i, 6.4, 3.2, 20.7)),
    "cutout_edge": (lambda x: ops.cutout(x, 5.0, (29.5, 1.0)),
                    lambda i: _cutout_ref(i, 5.0, 29.5, 1.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operation_equals_pil(case):
    ours, reference = CASES[case]
    got = ours(tf.constant(IMAGE)).numpy()
    want = np.asarray(reference(_pil(IMAGE)))
    assert got.dtype == np.float32 and got.shape == IMAGE.shape
    np.testing.assert_array_equal(got, want)
    assert case == "invert" or not np.array_equal(got, IMAGE) or case.startswith("cutout")


def test_auto_contrast_equals_pil():
    got = ops.auto_contrast(tf.constant(DULL)).numpy()
    np.testing.assert_array_equal(got, np.asarray(ImageOps.autocontrast(_pil(DULL))))
    assert got.min() == 0 and got.max() == 255
    flat = np.full((4, 4, 3), 77, np.uint8)  # one level: unchanged, as PIL
    np.testing.assert_array_equal(ops.auto_contrast(tf.constant(flat)).numpy(), flat)


@pytest.mark.parametrize("v", [0.17, -0.29])
@pytest.mark.parametrize("fn,matrix", [(ops.shear_x, lambda v: (1, v, 0, 0, 1, 0)),
                                       (ops.shear_y, lambda v: (1, 0, 0, v, 1, 0))])
def test_bicubic_shear_equals_pil_within_rounding(fn, matrix, v):
    got = fn(tf.constant(IMAGE), v, 128, "bicubic").numpy()
    want = np.asarray(_affine(_pil(IMAGE), matrix(v), Image.BICUBIC, GREY)).astype(np.float32)
    diff = np.abs(got - want)
    # PIL's C code sums the same cubic in another order: a value may land on the
    # other side of an integer
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.005


def test_entry_tables_as_published():
    assert {n: len(aa.get(n)) for n in aa.names()} == {
        "fa_shake26_2x96d_cifar100": 498, "fa_wresnet28x10_cifar100": 496,
        "fa_wresnet40x2_cifar100": 500, "fa_wresnet40x2_cifar100_r5": 490,
        "osi_cifar100": 25}
    # first sub-policy of each, typed from the entries' files
    first = aa.resolve("fa_wresnet40x2_cifar100",
                       [["Sharpness", 0.8335306713621571, 0.14372744283622144],
                        ["ShearY", 0.24450531270599207, 0.8523611051178847]])
    assert first[0][:2] == ("sharpness", pytest.approx(0.8335306713621571))
    assert first[0][3] == pytest.approx(0.1 + 1.8 * 0.14372744283622144)
    assert first[1][3] == pytest.approx(-0.3 + 0.6 * 0.8523611051178847) and first[1][4]
    policy = aa.get("fa_wresnet40x2_cifar100")
    assert aa.OPERATIONS[policy.op[0, 0]] == "sharpness"
    assert policy.magnitude[0, 1] == pytest.approx(first[1][3])
    osi = aa.get("osi_cifar100")
    # SubPolicy(0.9879223132161143, 'solarize', 1, 0.03867356636118723, 'rotate', 8)
    assert [aa.OPERATIONS[i] for i in osi.op[0]] == ["solarize", "rotate"]
    assert osi.prob[0, 0] == pytest.approx(0.9879223132161143)
    assert osi.magnitude[0, 0] == pytest.approx(256 - 256 / 9)
    assert osi.magnitude[0, 1] == pytest.approx(30 * 8 / 9) and not osi.signed[0, 1]
    # posterize index 0 -> 8 bits; AutoAugment's enhancers are 1 +- m
    assert aa.resolve("osi_cifar100", [["posterize", 0.5, 0]])[0][3] == 8
    assert aa.resolve("osi_cifar100", [["color", 0.5, 9]])[0][2:] == (1.0, pytest.approx(0.9), True)
    # Fast AutoAugment's Posterize takes int() of 4 + 4 level
    assert aa.resolve("fa_wresnet40x2_cifar100", [["Posterize", 1, 0.99]])[0][3] == 7
    assert osi.fill == 128 and osi.shear_resample == "bicubic" and policy.fill == 0
    assert aa.POLICY_SETS["kaist"][0] == "fa_wresnet28x10_cifar100"
    with pytest.raises(ValueError, match="known"):
        aa.get("cifar10_policy")


def _samples(policy, n, which=0):
    seeds = tf.data.Dataset.random(seed=3).batch(2).take(n)
    out = seeds.map(lambda s: policy.sample(s, which)).batch(n)
    index, applied, signs, centres = next(iter(out))
    return index.numpy(), applied.numpy(), signs.numpy(), centres.numpy()


def test_sampler_probabilities():
    subs = [[("shear_x", 0.2, 0.0, 0.1, True), ("invert", 0.9, 0.0, 0.0, False)],
            [("color", 0.5, 1.0, 0.4, True), ("rotate", 0.0, 0.0, 10.0, False)],
            [("cutout", 1.0, 0.0, 0.1, False)]]
    policy = aa.Policy.from_resolved("test", subs)
    assert aa.OPERATIONS[policy.op[2, 1]] == "identity"  # padded
    n = 6000
    index, applied, signs, centres = _samples(policy, n)
    for k in range(3):  # uniform choice: within 4 standard deviations
        assert abs(np.mean(index == k) - 1 / 3) < 4 * np.sqrt(2 / 9 / n)
    for k, sub in enumerate(subs):
        picked = index == k
        for j, (_, p, _, _, signed) in enumerate(sub):
            m = picked.sum()
            assert abs(applied[picked, j].mean() - p) <= 4 * np.sqrt(p * (1 - p) / m) + 1e-9
            flips = np.mean(signs[picked, j] < 0)
            if signed:
                assert abs(flips - 0.5) < 4 * np.sqrt(0.25 / m)
            else:
                assert flips == 0
    assert centres.min() >= 0 and centres.max() < 1
    # members of a concatenated policy draw only from their own rows
    both = aa.Policy.concat([policy, aa.Policy.from_resolved("one", subs[:1])])
    assert both.ranges == ((0, 3), (3, 1))
    assert set(_samples(both, 200, which=1)[0]) == {3}
    assert set(_samples(both, 200, which=0)[0]) == {0, 1, 2}


_PIL_OPS = {
    "shear_x": lambda i, a, p: _affine(i, (1, a, 0, 0, 1, 0), p["resample"], p["fill"]),
    "shear_y": lambda i, a, p: _affine(i, (1, 0, 0, a, 1, 0), p["resample"], p["fill"]),
    "translate_x": lambda i, a, p: _affine(i, (1, 0, a * i.size[0], 0, 1, 0), fill=p["fill"]),
    "translate_y": lambda i, a, p: _affine(i, (1, 0, 0, 0, 1, a * i.size[1]), fill=p["fill"]),
    "rotate": lambda i, a, p: i.rotate(a, fillcolor=p["fill"]),
    "auto_contrast": lambda i, a, p: ImageOps.autocontrast(i),
    "invert": lambda i, a, p: ImageOps.invert(i),
    "equalize": lambda i, a, p: ImageOps.equalize(i),
    "solarize": lambda i, a, p: ImageOps.solarize(i, a),
    "posterize": lambda i, a, p: ImageOps.posterize(i, int(a)),
    "contrast": lambda i, a, p: ImageEnhance.Contrast(i).enhance(a),
    "color": lambda i, a, p: ImageEnhance.Color(i).enhance(a),
    "brightness": lambda i, a, p: ImageEnhance.Brightness(i).enhance(a),
    "sharpness": lambda i, a, p: ImageEnhance.Sharpness(i).enhance(a),
    "identity": lambda i, a, p: i,
}


@pytest.mark.slow  # each policy's graph takes seconds to trace
@pytest.mark.parametrize("name", ["fa_wresnet28x10_cifar100", "osi_cifar100"])
def test_policy_is_the_pil_composition_of_its_draws(name):
    """Each image = the PIL operations of the drawn sub-policy, in order, with
    the entry's argument rule (read from the JSON table, not from ``Policy``)."""
    import json
    import os
    path = os.path.join(os.path.dirname(aa.__file__), "policies", "entries_cifar100.json")
    with open(path) as f:
        table = json.load(f)[name]
    policy = aa.get(name)
    params = {"fill": GREY if name.startswith("osi") else None,
              "resample": Image.BICUBIC if name.startswith("osi") else Image.NEAREST}
    seeds = tf.data.Dataset.random(seed=5).batch(2).take(24)
    run = seeds.map(lambda s: (policy(tf.constant(IMAGE), s), policy.sample(s)))
    applied_any = 0
    for image, (index, applied, signs, centres) in run.as_numpy_iterator():
        want = _pil(IMAGE)
        for j, (op_name, _, magnitude) in enumerate(table["sub_policies"][index]):
            if not applied[j]:
                continue
            applied_any += 1
            if name.startswith("fa_"):
                op, low, high, _ = aa.FAST_AUTOAUGMENT_RANGES[op_name]
                arg = signs[j] * (low + magnitude * (high - low))
            else:
                op, values, base, _ = aa.AUTOAUGMENT_RANGES[op_name]
                arg = base + signs[j] * values[magnitude]
            if op == "cutout":
                if arg > 0:
                    w, h = want.size
                    want = _cutout_ref(want, arg * w, centres[j][0] * w, centres[j][1] * h)
            else:
                want = _PIL_OPS[op](want, arg, params)
        diff = np.abs(image - np.asarray(want, np.float32))
        assert diff.max() <= (1 if name.startswith("osi") else 0), (index, applied)
    assert applied_any > 10


@pytest.mark.slow
def test_pipeline_holds_one_copy_per_policy():
    import tensorflow_datasets as tfds

    import mntk.data as md
    from mntk.data.base import DataError
    n = 6
    with tfds.testing.mock_data(num_examples=n):
        raw = np.stack([x.numpy() for x, _ in tfds.load(
            "cifar100", split="train", as_supervised=True, download=False,
            shuffle_files=False)])
        data = md.load("cifar100", batch_size=n, split="train", deterministic=True,
                       autoaugment="kaist", pad_fill=128)
        assert data.steps_per_epoch == 4 * 50000 // n
        epoch = list(data.train.take(5))
        with pytest.raises(DataError, match="known"):
            md.load("cifar100", split="train", autoaugment="cifar10")
        with pytest.raises(DataError, match="augment=True"):
            md.load("cifar100", split="train", autoaugment="osi_cifar100", augment=False)
    assert len(epoch) == 4  # 4 copies of 6 examples, then the data ends
    labels = np.concatenate([b[1].numpy() for b in epoch])
    # in deterministic mode the copies take turns: example i, copy k at 4 i + k
    assert np.array_equal(labels.reshape(n, 4), np.repeat(labels[::4][:, None], 4, axis=1))
    images = np.concatenate([b[0].numpy() for b in epoch]).reshape(n, 4, 32, 32, 3)
    assert images.shape[0] == raw.shape[0]
    differ = [not np.allclose(images[i, a], images[i, b]) for i in range(n)
              for a in range(4) for b in range(a + 1, 4)]
    assert np.mean(differ) > 0.8  # four policies, four different draws
