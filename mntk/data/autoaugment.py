"""AutoAugment-style policies as ``tf.data`` transforms: the MicroNet entries' own.

A policy is a list of sub-policies; each sub-policy a list of (operation,
probability, magnitude). Per image (AutoAugment, Cubuk et al. 2019, arXiv
1805.09501): one sub-policy is drawn uniformly, then each of its operations is
applied in order with its probability, some with a random sign. The
operations are PIL's (``mntk.data.image_ops``).

Policies (``POLICIES``; the numbers are in ``policies/entries_cifar100.json``):

- KAIST's four Fast AutoAugment policies (Lim et al. 2019, arXiv 1905.00397),
  searched on CIFAR-100 for wresnet28x10, shake26_2x96d, wresnet40x2 and
  wresnet40x2 (r5): ``fa_wresnet28x10_cifar100``, ``fa_shake26_2x96d_cifar100``,
  ``fa_wresnet40x2_cifar100``, ``fa_wresnet40x2_cifar100_r5``. Their rules
  (Utils/fast_augmentations.py): magnitude = low + level (high - low) with the
  ranges in ``FAST_AUTOAUGMENT_RANGES``; shear, translate and rotate flip
  their sign with probability 1/2; geometry is nearest-neighbour with black
  fill; Posterize takes int(); Cutout of side level * 0.2 * W at a uniform
  random centre, filled (125, 123, 114), nothing when the side is 0.
  ``POLICY_SETS["kaist"]`` lists the four in the entry's order: KAIST trained
  on one copy of CIFAR-100 per policy each epoch (Utils/transform.py:55-90).
- OSI-AI's ``osi_cifar100`` (data_utils/autoaugment.py CIFAR100Policy): the
  magnitude is an index 0..9 into ``AUTOAUGMENT_RANGES``; shear (bicubic) and
  translate flip sign, rotate does not (always counter-clockwise); the
  enhancers use 1 +- m; fill (128, 128, 128).

    policy = mntk.data.autoaugment.get("osi_cifar100")
    ds = ds.map(lambda image, label, seed: (policy(image, seed), label))
"""
import dataclasses
import json
import os
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from mntk.data import image_ops as ops

__all__ = ["Policy", "get", "get_many", "names", "POLICY_SETS", "FAST_AUTOAUGMENT_RANGES",
           "AUTOAUGMENT_RANGES", "OPERATIONS", "resolve"]

#: Every operation a policy may use, in ``tf.switch_case`` order.
OPERATIONS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
              "auto_contrast", "invert", "equalize", "solarize", "posterize",
              "contrast", "color", "brightness", "sharpness", "cutout")

#: Fast AutoAugment names -> (operation, low, high, random sign).
FAST_AUTOAUGMENT_RANGES = {
    "ShearX": ("shear_x", -0.3, 0.3, True), "ShearY": ("shear_y", -0.3, 0.3, True),
    "TranslateX": ("translate_x", -0.45, 0.45, True),   # x image width
    "TranslateY": ("translate_y", -0.45, 0.45, True),   # x image height
    "Rotate": ("rotate", -30.0, 30.0, True),
    "AutoContrast": ("auto_contrast", 0.0, 1.0, False), "Invert": ("invert", 0.0, 1.0, False),
    "Equalize": ("equalize", 0.0, 1.0, False), "Solarize": ("solarize", 0.0, 256.0, False),
    "Posterize": ("posterize", 4.0, 8.0, False),
    "Contrast": ("contrast", 0.1, 1.9, False), "Color": ("color", 0.1, 1.9, False),
    "Brightness": ("brightness", 0.1, 1.9, False), "Sharpness": ("sharpness", 0.1, 1.9, False),
    "Cutout": ("cutout", 0.0, 0.2, False),              # x image width
}

#: AutoAugment names -> (operation, magnitudes by index 0..9, base, random sign);
#: the argument is base + sign * magnitude.
AUTOAUGMENT_RANGES = {
    "shearX": ("shear_x", np.linspace(0, 0.3, 10), 0.0, True),
    "shearY": ("shear_y", np.linspace(0, 0.3, 10), 0.0, True),
    "translateX": ("translate_x", np.linspace(0, 150 / 331, 10), 0.0, True),
    "translateY": ("translate_y", np.linspace(0, 150 / 331, 10), 0.0, True),
    "rotate": ("rotate", np.linspace(0, 30, 10), 0.0, False),
    "color": ("color", np.linspace(0.0, 0.9, 10), 1.0, True),
    "posterize": ("posterize", np.round(np.linspace(8, 4, 10), 0), 0.0, False),
    "solarize": ("solarize", np.linspace(256, 0, 10), 0.0, False),
    "contrast": ("contrast", np.linspace(0.0, 0.9, 10), 1.0, True),
    "sharpness": ("sharpness", np.linspace(0.0, 0.9, 10), 1.0, True),
    "brightness": ("brightness", np.linspace(0.0, 0.9, 10), 1.0, True),
    "autocontrast": ("auto_contrast", np.zeros(10), 0.0, False),
    "equalize": ("equalize", np.zeros(10), 0.0, False),
    "invert": ("invert", np.zeros(10), 0.0, False),
}

_CONVENTIONS = {
    # fill, shear resampling
    "fast_autoaugment": (0.0, "nearest"),
    "autoaugment": (128.0, "bicubic"),
}

#: Named groups: one copy of the data per policy per epoch (``load_tfds``).
POLICY_SETS = {
    "kaist": ("fa_wresnet28x10_cifar100", "fa_shake26_2x96d_cifar100",
              "fa_wresnet40x2_cifar100", "fa_wresnet40x2_cifar100_r5"),
}

_PATH = os.path.join(os.path.dirname(__file__), "policies", "entries_cifar100.json")
_TABLE = None


def _table() -> Dict:
    global _TABLE
    if _TABLE is None:
        with open(_PATH) as f:
            _TABLE = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return _TABLE


def names() -> Tuple[str, ...]:
    """Names ``get`` knows."""
    return tuple(sorted(_table()))


def resolve(name: str, sub_policy) -> List[Tuple[str, float, float, float, bool]]:
    """One sub-policy in the entry's notation -> [(operation, probability,
    base, magnitude, random sign)], argument = base + sign * magnitude."""
    convention = _table()[name]["convention"] if name in _table() else name
    out = []
    for op, prob, magnitude in sub_policy:
        if convention == "fast_autoaugment":
            if op not in FAST_AUTOAUGMENT_RANGES:
                raise ValueError(f"policy {name!r}: unknown Fast AutoAugment operation {op!r}; "
                                 f"known: {sorted(FAST_AUTOAUGMENT_RANGES)}.")
            fn, low, high, signed = FAST_AUTOAUGMENT_RANGES[op]
            value = float(magnitude) * (high - low) + low
            if fn == "posterize":
                value = float(int(value))
            out.append((fn, float(prob), 0.0, value, signed))
        elif convention == "autoaugment":
            if op not in AUTOAUGMENT_RANGES:
                raise ValueError(f"policy {name!r}: unknown AutoAugment operation {op!r}; "
                                 f"known: {sorted(AUTOAUGMENT_RANGES)}.")
            fn, table, base, signed = AUTOAUGMENT_RANGES[op]
            out.append((fn, float(prob), base, float(table[int(magnitude)]), signed))
        else:
            raise ValueError(f"policy {name!r}: unknown convention {convention!r}; use "
                             f"{sorted(_CONVENTIONS)}.")
    return out


@dataclasses.dataclass(frozen=True)
class Policy:
    """A policy ready to run: per sub-policy and slot the operation index,
    probability, base, magnitude and random-sign flag (numpy arrays of shape
    (sub-policies, slots)), the fill value and the shear resampling."""
    name: str
    op: np.ndarray
    prob: np.ndarray
    base: np.ndarray
    magnitude: np.ndarray
    signed: np.ndarray
    fill: float = 0.0
    shear_resample: str = "nearest"
    #: (first sub-policy, count) of each member policy (``concat``)
    ranges: Tuple[Tuple[int, int], ...] = ()

    def __post_init__(self):
        if not self.ranges:
            object.__setattr__(self, "ranges", ((0, int(self.op.shape[0])),))

    @classmethod
    def concat(cls, policies: Sequence["Policy"]) -> "Policy":
        """One table holding several policies (same fill and resampling), so a
        pipeline that picks a policy per example traces the operations once;
        call it with ``which`` = the member's position."""
        policies = list(policies)
        first = policies[0]
        for p in policies[1:]:
            if (p.fill, p.shear_resample, p.op.shape[1]) != (
                    first.fill, first.shear_resample, first.op.shape[1]):
                raise ValueError(
                    f"Policy.concat: {p.name!r} (fill {p.fill}, {p.shear_resample}, "
                    f"{p.op.shape[1]} slots) and {first.name!r} (fill {first.fill}, "
                    f"{first.shear_resample}, {first.op.shape[1]} slots) differ; run "
                    "policies of different conventions in separate pipelines.")
        ranges, start = [], 0
        for p in policies:
            ranges.append((start, len(p)))
            start += len(p)
        cat = lambda f: np.concatenate([getattr(p, f) for p in policies])  # noqa: E731
        return cls("+".join(p.name for p in policies), cat("op"), cat("prob"), cat("base"),
                   cat("magnitude"), cat("signed"), first.fill, first.shear_resample,
                   tuple(ranges))

    @classmethod
    def from_resolved(cls, name, sub_policies, fill=0.0, shear_resample="nearest"):
        """``sub_policies``: lists of (operation, probability, base, magnitude,
        random sign) as ``resolve`` returns; shorter ones are padded with
        identity."""
        if not sub_policies:
            raise ValueError(f"policy {name!r} has no sub-policy.")
        slots = max(len(s) for s in sub_policies)
        rows = [list(s) + [("identity", 0.0, 0.0, 0.0, False)] * (slots - len(s))
                for s in sub_policies]
        for row in rows:
            for op, *_ in row:
                if op not in OPERATIONS:
                    raise ValueError(f"policy {name!r}: unknown operation {op!r}; "
                                     f"known: {OPERATIONS}.")
        field = lambda i, dtype: np.array([[e[i] for e in r] for r in rows], dtype)  # noqa: E731
        return cls(name, np.array([[OPERATIONS.index(e[0]) for e in r] for r in rows], np.int32),
                   field(1, np.float32), field(2, np.float64), field(3, np.float64),
                   field(4, bool), float(fill), shear_resample)

    def __len__(self):
        return int(self.op.shape[0])

    def __hash__(self):
        return hash((self.name, self.ranges))

    def __eq__(self, other):
        return isinstance(other, Policy) and self.name == other.name and all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("op", "prob", "base", "magnitude", "signed"))

    def sample(self, seed, which=0):
        """The random choices for one image: (sub-policy index, applied per
        slot, sign per slot, cutout centre per slot as fractions (x, y)).
        ``which``: the member policy (``concat``) to draw from."""
        slots = int(self.op.shape[1])
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 1 + 3 * slots))
        ranges = tf.constant(self.ranges, tf.int32)
        start, count = tf.unstack(tf.gather(ranges, tf.cast(which, tf.int32)))
        index = start + tf.random.stateless_uniform([], seeds[0], 0, count, tf.int32)
        applied, signs, centres = [], [], []
        for j in range(slots):
            u = tf.random.stateless_uniform([], seeds[1 + 3 * j])
            applied.append(u < tf.gather(tf.constant(self.prob[:, j]), index))
            flip = tf.random.stateless_uniform([], seeds[2 + 3 * j]) < 0.5
            signed = tf.gather(tf.constant(self.signed[:, j]), index)
            signs.append(tf.where(signed & flip, -1.0, 1.0))
            centres.append(tf.random.stateless_uniform([2], seeds[3 + 3 * j], dtype=tf.float64))
        return index, tf.stack(applied), tf.cast(tf.stack(signs), tf.float64), tf.stack(centres)

    def apply_op(self, image, op, argument, centre):
        """Operation number ``op`` (``OPERATIONS``) with its final argument."""
        fill, resample = self.fill, self.shear_resample
        h = tf.cast(tf.shape(image)[0], tf.float64)
        w = tf.cast(tf.shape(image)[1], tf.float64)
        image = tf.cast(image, tf.float32)

        def cut():
            side = argument * w
            return tf.cond(side > 0, lambda: ops.cutout(image, side, centre * [w, h]),
                           lambda: image)

        branches = [
            lambda: image,
            lambda: ops.shear_x(image, argument, fill, resample),
            lambda: ops.shear_y(image, argument, fill, resample),
            lambda: ops.translate_x(image, argument * w, fill),
            lambda: ops.translate_y(image, argument * h, fill),
            lambda: ops.rotate(image, argument, fill),
            lambda: ops.auto_contrast(image),
            lambda: ops.invert(image),
            lambda: ops.equalize(image),
            lambda: ops.solarize(image, argument),
            lambda: ops.posterize(image, tf.cast(argument, tf.int32)),
            lambda: ops.contrast(image, argument),
            lambda: ops.color(image, argument),
            lambda: ops.brightness(image, argument),
            lambda: ops.sharpness(image, argument),
            cut,
        ]
        out = tf.switch_case(tf.cast(op, tf.int32), branches)
        return tf.ensure_shape(out, image.shape)

    @tf.autograph.experimental.do_not_convert  # plain graph code: traces 10x faster
    def __call__(self, image, seed, which=0):
        """Augment one (H, W, 3) image of values 0..255; float32 0..255 out.
        ``seed``: a [2] integer seed; ``which``: the member policy (``concat``)."""
        index, applied, signs, centres = self.sample(seed, which)
        out = tf.cast(image, tf.float32)
        for j in range(int(self.op.shape[1])):
            op = tf.gather(tf.constant(self.op[:, j]), index)
            argument = (tf.gather(tf.constant(self.base[:, j]), index)
                        + signs[j] * tf.gather(tf.constant(self.magnitude[:, j]), index))
            out = tf.cond(applied[j], lambda: self.apply_op(out, op, argument, centres[j]),
                          lambda: out)
        return out


_CACHE: Dict[str, Policy] = {}


def get(policy: Union[str, Policy]) -> Policy:
    """A ``Policy`` by name (``names()``), or the policy itself."""
    if isinstance(policy, Policy):
        return policy
    if policy not in _CACHE:
        table = _table()
        if policy not in table:
            raise ValueError(f"Unknown augmentation policy {policy!r}; known: "
                             f"{', '.join(names())} (and the sets {sorted(POLICY_SETS)}).")
        entry = table[policy]
        fill, resample = _CONVENTIONS[entry["convention"]]
        _CACHE[policy] = Policy.from_resolved(
            policy, [resolve(policy, s) for s in entry["sub_policies"]], fill, resample)
    return _CACHE[policy]


def get_many(policies: Union[str, Policy, Sequence]) -> List[Policy]:
    """A set name (``POLICY_SETS``), one policy, or a list of them -> policies."""
    if isinstance(policies, str) and policies in POLICY_SETS:
        policies = POLICY_SETS[policies]
    if isinstance(policies, (str, Policy)):
        policies = [policies]
    out = [get(p) for p in policies]
    if not out:
        raise ValueError("autoaugment: an empty list of policies; pass a name, a set "
                         f"name {sorted(POLICY_SETS)} or a list of names.")
    return out
