"""Ternary weights on KAIST's CIFAR-100 network: trained ternary quantization
(Zhu et al., ICLR 2017) of ``mntk.models.kaist_micronet``, fine-tuned the way
ProxylessNAS-TTQ fine-tuned its net.

Reproduces no published number. No MicroNet entry did this: it is an mntk
combination. The two ternary CIFAR-100 entries did other things (ENTRIES.md):
- HHI-MAL (0.0242) ternarized a BasicBlock ResNet (3 stages of 23 blocks,
  widths 32/64/120) by entropy-constrained ternarization (EC2T), not TTQ on
  an EfficientNet-like net.
- ProxylessNAS-TTQ (0.1433) fine-tuned a searched net with TTQ for 30 epochs,
  SGD lr 0.01 cosine, threshold 0.7 * mean|W|, depthwise convs left in
  float (Nets/qcifar100/run.config, quantize/ttq.py:4).
The fine-tune here takes ProxylessNAS-TTQ's schedule; the threshold is TTQ's
0.05 * max|w| (mntk's ternary scheme).
Score: the official rules only (ternary counting: a sign bit per nonzero
weight + a 1-bit mask + two scales per layer; 2 multiplies and nonzeros - 1
adds per output); ternary forfeits the 16-bit freebie. Compare with KAIST's
0.0054 at the same 80% target.

Float stage: KAIST's training as its code has it (see kaist_cifar100.py;
repeated here, recipes import nothing from each other): SGD Nesterov 0.1,
batch 128, coupled L2 1e-5, four equal 150-epoch cosine cycles to 5e-4 with
fresh optimizers, four Fast-AutoAugment copies an epoch, CutMix, SRIP 0.7 (mean, fan-in side, fresh vector) on all
1x1 convs, adaptive smoothing eps 0.3.

Departures, and why: the first conv and the
classifier stay float (TTQ's paper rule); the depthwise convs keep 8-bit
kernels (``TernaryScheme(depthwise="int8")``, mntk's default), where
ProxylessNAS-TTQ kept them float.

Stages: train -> export (float model) -> quantize (TTQ, int8 TFLite verified).

One GPU: KAIST's 600 float epochs + 30 TTQ epochs; estimated 15 h on one
H100-class GPU (not measured), most of it the float stage.

Run:   mntk train --config=recipes/ternary_cifar100.py --workdir=runs/ternary
Smoke: mntk train --config=recipes/ternary_cifar100.py:smoke --workdir=/tmp/ternary
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "ternary_cifar100"
    c.seed = 0
    c.smoke = arg == "smoke"
    c.strategy = "default"
    c.verbose = 2
    c.stages = ("train", "export", "quantize")

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar100"
    c.data.batch_size = 128
    c.data.mix = "cutmix"
    c.data.mix_alpha = 1.0
    c.data.autoaugment = "kaist"
    c.data.pad_fill = 128.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "kaist_micronet"
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 600
    c.train.optimizer = "sgd"
    c.train.nesterov = True
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.schedule = "cosine_cycles"
    c.train.restart_cycles = 4
    c.train.min_learning_rate = 5e-4
    c.train.weight_decay = 0.0
    c.train.l2 = 1e-5
    c.train.l2_on = "all"
    c.train.scale_with_replicas = True
    c.train.max_steps_per_epoch = 0

    c.tricks = ml_collections.ConfigDict()
    c.tricks.srip = ml_collections.ConfigDict(
        {"enabled": True, "coefficient": 0.7, "layers": "pointwise",
         "power_iterations": 2, "squared": True, "reduction": "mean",
         "gram": "fan_in", "vector": "fresh", "schedule": ""})
    c.tricks.adaptive_smoothing = ml_collections.ConfigDict(
        {"enabled": True, "epsilon": 0.3, "refresh": "epoch"})

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "cifar100"
    c.cost.freebie = False       # below 16 bits: no freebie

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "ternary"
    c.quantize.threshold = 0.05
    c.quantize.skip = "default"  # stem conv and classifier float
    c.quantize.epochs = 30
    c.quantize.optimizer = "sgd"
    c.quantize.nesterov = False
    c.quantize.learning_rate = 0.01
    c.quantize.schedule = "cosine"
    c.quantize.min_learning_rate = 0.0

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    c.export.verify_examples = 2000

    if c.smoke:
        smoke(c)
    return c


def smoke(c):
    """Seconds on CPU: digits at 16x16 RGB, two block rows, a few steps."""
    c.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 16, "channels": 3, "batch_size": 32,
         "mix": "cutmix", "mix_alpha": 1.0, "fractions": (0.6, 0.2, 0.2)})
    c.model.kwargs = ml_collections.ConfigDict(
        {"blocks_table": ((3, 16, 1, 1), (3, 24, 2, 2)), "stem_filters": 16})
    c.train.epochs = 2
    c.train.restart_cycles = 2
    c.train.max_steps_per_epoch = 8
    c.train.learning_rate = 0.05
    c.quantize.epochs = 2
    c.export.representative_examples = 32
    c.export.verify_examples = 64
