"""The demo recipe: the digits CNN on scikit-learn's bundled 8x8 digits.

Runs in about a minute on 2 CPU cores. Stages: train (with SRIP on the
pointwise convs and adaptive label smoothing), then TFLite export (float and
int8) verified with LiteRT. The cost is counted against the CIFAR-100
baselines only to have a scale: digits is not a MicroNet task.

Run:  mntk train --config=recipes/digits.py --workdir=runs/digits
Override any field:  --config.train.epochs=3
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "digits"
    c.seed = 0
    c.strategy = "default"       # default | mirrored | multi_worker | tpu
    c.tpu = ""
    c.verbose = 2
    c.stages = ("train", "export")

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.batch_size = 32

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

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    return c
