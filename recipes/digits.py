"""The demo recipe: the digits CNN on scikit-learn's bundled 8x8 digits.

Runs in about two minutes on 2 CPU cores. Stages: train (with SRIP on the
pointwise convs and adaptive label smoothing); TFLite export (float and int8)
verified with LiteRT; an early-exit head calibrated for at most half a point
of accuracy drop, run per sample in Keras and as staged TFLite; magnitude
pruning to 50%; trained ternary quantization fine-tuning exported to int8. The cost is counted against the CIFAR-100
baselines only to have a scale: digits is not a MicroNet task.

Run:  mntk train --config=recipes/digits.py --workdir=runs/digits
Override any field:  --config.train.epochs=3
Smoke (seconds: every stage, two steps an epoch):
      mntk train --config=recipes/digits.py --workdir=/tmp/digits --config.smoke=True
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "digits"
    c.seed = 0
    c.smoke = arg == "smoke"
    c.strategy = "default"       # default | mirrored | multi_worker | tpu
    c.tpu = ""
    c.verbose = 2
    c.stages = ("train", "export", "early_exit", "prune", "quantize")

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.batch_size = 32
    # a 360-image validation split: early-exit thresholds are calibrated on it
    c.data.fractions = (0.6, 0.2, 0.2)

    c.model = ml_collections.ConfigDict()
    c.model.name = "digits_cnn"
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict({"width": 16})

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 15
    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-3
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.scale_with_replicas = True

    c.tricks = ml_collections.ConfigDict()
    c.tricks.srip = ml_collections.ConfigDict(
        {"enabled": True, "coefficient": 1e-2, "layers": "pointwise",
         "power_iterations": 2, "squared": False, "schedule": ""})
    c.tricks.adaptive_smoothing = ml_collections.ConfigDict(
        {"enabled": True, "epsilon": 0.3, "refresh": "epoch"})

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "cifar100"
    c.cost.freebie = False
    c.cost.note = "digits model scored against the CIFAR-100 baselines, for scale only"

    # OSI-style exit head after block 1, trained with the backbone frozen and
    # calibrated to lose no validation accuracy.
    c.early_exit = ml_collections.ConfigDict()
    c.early_exit.at = ("block1_out",)
    c.early_exit.head = "osi"
    c.early_exit.head_bn_momentum = 0.9   # BN statistics settle on a small data set
    c.early_exit.loss = "confidence_weighted"
    c.early_exit.freeze_backbone = True
    c.early_exit.epochs = 8
    c.early_exit.learning_rate = 1e-2
    c.early_exit.schedule = "constant"
    c.early_exit.criterion = "max_softmax"
    c.early_exit.target = ml_collections.ConfigDict({"max_accuracy_drop": 0.0})

    # Magnitude pruning to 50% (KAIST pruned with epsilon 0.1 smoothing), then
    # trained ternary quantization fine-tuning of the pruned model.
    c.prune = ml_collections.ConfigDict()
    c.prune.target = 0.5
    c.prune.sparsity_schedule = "polynomial"
    c.prune.epochs = 4
    c.prune.learning_rate = 1e-3
    c.prune.smoothing_epsilon = 0.1

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "ternary"      # ternary | learned | binary | int8
    c.quantize.threshold = 0.05
    c.quantize.epochs = 5
    c.quantize.learning_rate = 1e-3

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    if c.smoke:
        smoke(c)
    return c


def smoke(c):
    """Seconds on CPU: every stage, one or two epochs of two steps each."""
    c.train.epochs = 2
    c.train.max_steps_per_epoch = 2
    c.early_exit.epochs = 1
    c.prune.epochs = 1
    c.quantize.epochs = 1
    c.export.representative_examples = 32
    c.export.verify_examples = 64
