"""Reference architectures: the demo's digits CNN and the entries' backbones.

All builders return functional ``keras.Model``s with logits output (no
softmax), made only of layers the MicroNet cost counter knows, with each
block's (or stage's) last layer named ``block{i}_out`` for early exits.
The entries' own networks (``kaist_micronet``, ``osi_efficientnet``,
``resnet_preact``) follow their code; ``kaist_mobilenet`` and
``efficientnet_cifar`` are the earlier approximations, kept for benchmarks.
``get(name, **kwargs)`` builds one by name.
"""
import functools

from mntk.models.blocks import hard_swish, squeeze_excite
from mntk.models.digits import digits_cnn
from mntk.models.efficientnet import efficientnet_b0, efficientnet_cifar
from mntk.models.kaist import kaist_micronet
from mntk.models.layers import ChannelPad, GhostBatchNormalization, KeepBranch, NearestUpsample
from mntk.models.mobilenet import kaist_mobilenet, make_divisible, mobilenet_v2_cifar
from mntk.models.osi import osi_efficientnet, osi_exit_head
from mntk.models.resnet import resnet_cifar, resnet_preact, wide_resnet

REGISTRY = {
    "digits_cnn": digits_cnn,
    "kaist_mobilenet": kaist_mobilenet,
    "mobilenet_v2_cifar": mobilenet_v2_cifar,
    "resnet_cifar": resnet_cifar,
    "resnet20": functools.partial(resnet_cifar, 20),
    "resnet32": functools.partial(resnet_cifar, 32),
    "resnet56": functools.partial(resnet_cifar, 56),
    "wide_resnet": wide_resnet,
    "wrn28_10": functools.partial(wide_resnet, 28, 10),
    "efficientnet_cifar": efficientnet_cifar,
    "efficientnet_b0": efficientnet_b0,
    # the entries' own networks (recipes/)
    "kaist_micronet": kaist_micronet,
    "osi_efficientnet": osi_efficientnet,
    "resnet_preact": resnet_preact,
    "preact_resnet20": functools.partial(resnet_preact, 20),
    "preact_resnet32": functools.partial(resnet_preact, 32),
    "preact_resnet56": functools.partial(resnet_preact, 56),
}

__all__ = ["get", "names", "REGISTRY", "digits_cnn", "kaist_mobilenet",
           "mobilenet_v2_cifar", "resnet_cifar", "wide_resnet", "efficientnet_cifar",
           "efficientnet_b0", "squeeze_excite", "hard_swish", "make_divisible",
           "kaist_micronet", "osi_efficientnet", "osi_exit_head", "resnet_preact",
           "GhostBatchNormalization", "NearestUpsample", "ChannelPad", "KeepBranch"]


def names():
    """Model names ``get`` knows."""
    return tuple(REGISTRY)


def get(name: str, **kwargs):
    """Build the model registered as ``name`` with the builder's ``kwargs``
    (``input_shape``, ``num_classes``, ...)."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown model {name!r}; known: {', '.join(names())}.")
    try:
        return REGISTRY[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"model {name!r}: {e}") from None
        raise
