"""Counting profiles: the conventions an entry used to count its own model.

The MicroNet rules (`"official"`, the default) leave room: each 2019 entry
counted its model slightly differently, and reproducing an entry's published
number needs its conventions. A profile is a small declarative object that
says only where it departs from the official counting:

    mntk.cost.estimate(model, task="cifar100", conventions="kaist")
    mntk.cost.estimate(model, conventions=mntk.cost.CountingProfile(
        name="mine", freebie=True, residual_adds=False))

Fields (all optional; the defaults are the official rules):
  freebie: count params and multiplies at 16 bits (adds at the accumulator).
  accumulator_bits: bits of every add.
  storage: "cheaper" (official: each kernel stored the cheaper of dense and
    sparse-with-mask) or "sparse" (every kernel of rank >= 2 stored as its
    nonzeros + a 1-bit mask over the whole tensor, dense or not).
  activation_costs: {name: (mults, adds)} per element, overriding
    `mntk.cost.ACTIVATION_COSTS` for those names.
  residual_adds: count the adds of merge layers (`Add`, or a TF-op `+` of
    two tensors): 1 add per element.
  scale_multiplies: count broadcast multiplies (a squeeze-excite gate
    `x * s` with s of shape (1, 1, C)): 1 mult per element.

Built-in profiles (facts from ../shared/ENTRIES.md):
  official  the MicroNet rules (DESIGN.md "MicroNet scoring rules").
  kaist     KAIST (CIFAR-100, 2nd; Score_MicroNet.ipynb, Counting/count_hooks.py):
            16-bit freebie (params and mults /2, adds full); params =
            nonzeros + one folded bias per conv output channel + FC, at 16
            bits, + a 1-bit mask over every >= 2-D weight; h-swish 4 mults
            + 1 add, sigmoid 2 + 1; residual adds and SE scale multiplies not
            counted.
  osi       OSI-AI (CIFAR-100, 3rd): the official counting with 16-bit
            inputs and parameters (so multiplies at 16), accumulator 32,
            1-bit mask, BatchNorm as a conv bias: the official rules with
            the freebie.
Add your own with `register_profile`.
"""
import dataclasses
from typing import Dict, Mapping, Tuple, Union

__all__ = ["CountingProfile", "PROFILES", "register_profile", "get_profile"]

_STORAGE = ("cheaper", "sparse")


@dataclasses.dataclass(frozen=True)
class CountingProfile:
    """Where a way of counting departs from the official MicroNet rules.

    See the module docstring for each field; `description` says whose
    conventions these are and where they come from.
    """
    name: str
    description: str = ""
    freebie: bool = False
    accumulator_bits: float = 32.0
    storage: str = "cheaper"
    activation_costs: Mapping[str, Tuple[int, int]] = dataclasses.field(default_factory=dict)
    residual_adds: bool = True
    scale_multiplies: bool = True

    def __post_init__(self):
        if self.storage not in _STORAGE:
            raise ValueError(f"CountingProfile {self.name!r}: storage={self.storage!r} "
                             f"is not one of {_STORAGE}.")
        if not float(self.accumulator_bits) > 0:
            raise ValueError(f"CountingProfile {self.name!r}: accumulator_bits="
                             f"{self.accumulator_bits!r} must be positive.")
        for act, cost in dict(self.activation_costs).items():
            if len(tuple(cost)) != 2:
                raise ValueError(f"CountingProfile {self.name!r}: activation_costs"
                                 f"[{act!r}] = {cost!r} is not a (mults, adds) pair.")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["activation_costs"] = {k: list(v) for k, v in dict(self.activation_costs).items()}
        return out


PROFILES: Dict[str, CountingProfile] = {}


def register_profile(profile: CountingProfile) -> CountingProfile:
    """Make `profile` available as `estimate(..., conventions=profile.name)`."""
    if not isinstance(profile, CountingProfile):
        raise TypeError(f"register_profile takes a CountingProfile, got {type(profile).__name__}.")
    PROFILES[profile.name] = profile
    return profile


def get_profile(conventions: Union[str, CountingProfile]) -> CountingProfile:
    """The profile named `conventions` (or `conventions` itself)."""
    if isinstance(conventions, CountingProfile):
        return conventions
    try:
        return PROFILES[conventions]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown counting conventions {conventions!r}; use one of "
            f"{sorted(PROFILES)}, a mntk.cost.CountingProfile, or register one with "
            "mntk.cost.register_profile.") from None


register_profile(CountingProfile(
    "official", "The MicroNet Challenge rules (NeurIPS 2019), as in DESIGN.md."))
register_profile(CountingProfile(
    "kaist",
    "KAIST (CIFAR-100 2nd place): (revised)Score_MicroNet.ipynb and "
    "Counting/count_hooks.py @9f71fb7: 16-bit freebie, every >= 2-D weight "
    "stored as nonzeros + 1-bit mask, h-swish 4+1, sigmoid 2+1, residual adds "
    "and SE scale multiplies not counted.",
    freebie=True, storage="sparse",
    activation_costs={"hard_swish": (4, 1), "hard_silu": (4, 1), "sigmoid": (2, 1)},
    residual_adds=False, scale_multiplies=False))
register_profile(CountingProfile(
    "osi",
    "OSI-AI (CIFAR-100 3rd place), README @fb0163a: the official counting.py "
    "with 16-bit inputs and parameters, accumulator 32, 1-bit mask, BN as a "
    "conv bias.",
    freebie=True))
