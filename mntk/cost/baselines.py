"""MicroNet Challenge baselines (NeurIPS 2019).

score = P / P_base + M / M_base, where P is parameter storage in 32-bit
equivalents and M is math operations per example in 32-bit equivalents
(MicroNet Challenge rules, https://micronet-challenge.github.io/scoring_and_submission.html).
Example from the rules: 3M params + 500M ops on ImageNet scores
3/6.9 + 500/1170 = 0.862.
"""
import dataclasses

__all__ = ["Baseline", "BASELINES", "baseline"]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One task's reference model: its params, ops and the accuracy target."""
    task: str
    model: str
    params: float
    ops: float
    top1_target: float

    def score(self, params: float, ops: float) -> float:
        """params / P_base + ops / M_base."""
        return params / self.params + ops / self.ops

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


BASELINES = {
    "cifar100": Baseline("cifar100", "WideResNet-28-10", 36.5e6, 10.49e9, 0.80),
    "imagenet": Baseline("imagenet", "MobileNetV2-1.4", 6.9e6, 1170e6, 0.75),
}


def baseline(task: str) -> Baseline:
    """The Baseline for `task`, or a ValueError listing the known tasks."""
    try:
        return BASELINES[task]
    except KeyError:
        raise ValueError(
            f"Unknown MicroNet task {task!r}; use one of {sorted(BASELINES)} "
            "(or task=None for no score).") from None
