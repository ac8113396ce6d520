"""MicroNet Challenge cost estimator: score any Keras model by the rules.

    report = mntk.cost.estimate(model, task="cifar100")
    report.params, report.ops, report.score
    print(report.table())

Rules and formulas: `mntk.cost.rules` (kernels, activations),
`mntk.cost.layer_rules` (the other layers), `mntk.cost.storage` (dense or
sparse encoding), `mntk.cost.wrappers` (tfmot pruning / quantization and the
quantizer protocol). Custom layers: `mntk.cost.register_rule(MyLayer, fn)`.
An entry's own counting conventions: `estimate(..., conventions="kaist")`,
see `mntk.cost.profiles`.
"""
from mntk.cost.baselines import BASELINES, Baseline
from mntk.cost.profiles import PROFILES, CountingProfile, get_profile, register_profile
from mntk.cost.report import CostReport, LayerCost
from mntk.cost.rules import ACTIVATION_COSTS, CostContext, register_rule
from mntk.cost.walker import estimate, layer_rows
from mntk.cost.layer_rules import register_tf_op


def __getattr__(name):
    # The callback pulls in the Keras callbacks machinery; load it on demand.
    if name == "CostLogger":
        from mntk.cost.logger import CostLogger
        return CostLogger
    raise AttributeError(f"module 'mntk.cost' has no attribute {name!r}")


__all__ = ["estimate", "layer_rows", "CostReport", "LayerCost", "BASELINES", "Baseline",
           "register_rule", "CostContext", "ACTIVATION_COSTS", "CostLogger",
           "CountingProfile", "PROFILES", "register_profile", "get_profile",
           "register_tf_op"]
