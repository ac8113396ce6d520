"""OSI-AI's MicroNet 2019 CIFAR-100 entry (3rd place): an EfficientNet-style
net with one early-exit head after block 4, trained with the backbone frozen,
then magnitude pruning.

Reproduces: about 30% of test images leave at the head (max softmax > 0.85),
80.0% top-1, MicroNet score 0.0061 without the exit -> 0.0058 with it.

Recipe (facts in DESIGN.md): head after block 4 = depthwise 3x3 -> 1x1 conv ->
pool -> dense (``mntk.early_exit.osi_head``), trained alone on the frozen
backbone with the confidence-weighted loss (CE x (1 + max softmax)); a sample
exits when its max softmax passes the threshold.

Departures: the entry's network widths, training schedule and quantization
are not in our facts: the backbone is ``efficientnet_cifar`` (B0's stages,
stride 8 for 32x32) at width 1.0 trained with SGD/cosine for 300 epochs, so
its score is far above 0.0058 until it is shrunk and quantized like the
entry's; the threshold is calibrated on the validation split for the
published 30% exit rate (the stage records the threshold it found, to compare
with 0.85) instead of being fixed; pruning goes to 50% (our choice).

Stages: train -> early_exit (head, calibration, per-sample exit in Keras and as
staged TFLite) -> prune -> export (the pruned backbone as float/int8 TFLite).

Run:   mntk train --config=recipes/osi_cifar100.py --workdir=runs/osi
Smoke: mntk train --config=recipes/osi_cifar100.py:smoke --workdir=/tmp/osi
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "osi_cifar100"
    c.seed = 0
    c.smoke = arg == "smoke"
    c.strategy = "default"       # default | mirrored | multi_worker | tpu
    c.tpu = ""
    c.verbose = 2
    c.stages = ("train", "early_exit", "prune", "export")

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar100"
    c.data.batch_size = 128      # per replica
    # 45k/5k/10k: the exit threshold is calibrated on held-out training images
    c.data.split_names = ml_collections.ConfigDict(
        {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"})

    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnet_cifar"
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict(
        {"width_multiplier": 1.0, "depth_multiplier": 1.0, "head_filters": 1280,
         "dropout": 0.2, "drop_connect_rate": 0.2})

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 300
    c.train.optimizer = "sgd"
    c.train.nesterov = True
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.schedule = "cosine"
    c.train.weight_decay = 5e-5
    c.train.scale_with_replicas = True
    c.train.max_steps_per_epoch = 0

    c.tricks = ml_collections.ConfigDict()

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "cifar100"
    c.cost.freebie = True

    c.early_exit = ml_collections.ConfigDict()
    c.early_exit.at = ("block4_out",)
    c.early_exit.head = "osi"
    c.early_exit.loss = "confidence_weighted"
    c.early_exit.freeze_backbone = True
    c.early_exit.epochs = 30
    c.early_exit.learning_rate = 0.01
    c.early_exit.schedule = "cosine"
    c.early_exit.criterion = "max_softmax"
    c.early_exit.target = ml_collections.ConfigDict({"exit_rate": 0.3})
    c.early_exit.max_examples = 0      # 0: the whole validation / test split

    c.prune = ml_collections.ConfigDict()
    c.prune.target = 0.5
    c.prune.sparsity_schedule = "polynomial"
    c.prune.epochs = 60
    c.prune.learning_rate = 0.01
    c.prune.schedule = "cosine"

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    c.export.verify_examples = 2000

    if c.smoke:
        smoke(c)
    return c


def smoke(c):
    """Seconds on CPU: digits at 32x32 RGB, a quarter-width net, a few steps."""
    c.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 32, "channels": 3, "batch_size": 32,
         "fractions": (0.6, 0.2, 0.2)})
    c.model.kwargs = ml_collections.ConfigDict(
        {"width_multiplier": 0.25, "depth_multiplier": 0.3, "head_filters": 64,
         "dropout": 0.0, "drop_connect_rate": 0.0})
    c.train.epochs = 2
    c.train.max_steps_per_epoch = 8
    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-3
    c.early_exit.epochs = 2
    c.early_exit.learning_rate = 3e-3
    c.early_exit.schedule = "constant"
    c.prune.epochs = 2
    c.prune.learning_rate = 1e-3
    c.export.representative_examples = 32
    c.export.verify_examples = 64
