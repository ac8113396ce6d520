"""Ternary weights on KAIST's CIFAR-100 backbone: trained ternary quantization
(Zhu et al., ICLR 2017) of the MobileNetV3-like net of ``kaist_cifar100.py``,
the direction of the HHI-MAL / ProxylessNAS-TTQ MicroNet entries.

Reproduces no single published number: it scores the KAIST net with ternary
counting (a sign bit per nonzero weight + a 1-bit mask + two 32-bit scales
per layer; 2 multiplies and nonzeros - 1 adds per output), to compare with
KAIST's 0.0054 (16-bit freebie, 60% sparse) at the same 80% target.

Recipe: the KAIST float training (SRIP on all 1x1 convs, adaptive label
smoothing eps 0.3, CutMix, SGD Nesterov 0.1, cosine restarts) -> TTQ
fine-tuning (threshold 0.05 * max|w|, first conv and last Dense float).

Departures: the entries' own backbones (ProxylessNAS) are not used; the
fine-tuning schedule (Adam 1e-3, cosine, 100 epochs, CutMix kept) is our
choice; ternary quantization forfeits the 16-bit freebie.

Stages: train -> export (float model) -> quantize (TTQ, int8 TFLite verified).

Run:   mntk train --config=recipes/ternary_cifar100.py --workdir=runs/ternary
Smoke: mntk train --config=recipes/ternary_cifar100.py:smoke --workdir=/tmp/ternary
"""
import ml_collections

from recipes import kaist_cifar100


def get_config(arg=None):
    # the float stage is KAIST's recipe; only the later stages differ
    c = kaist_cifar100.get_config()
    c.name = "ternary_cifar100"
    c.smoke = arg == "smoke"
    c.stages = ("train", "export", "quantize")
    c.cost.freebie = False       # below 16 bits: no freebie

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "ternary"
    c.quantize.threshold = 0.05
    c.quantize.skip = "default"
    c.quantize.epochs = 100
    c.quantize.optimizer = "adam"
    c.quantize.learning_rate = 1e-3
    c.quantize.schedule = "cosine"

    if c.smoke:
        kaist_cifar100.smoke(c)
        c.quantize.epochs = 2
    del c["prune"]
    return c
