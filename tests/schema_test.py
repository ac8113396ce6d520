"""The recipe schema: one table of fields, unknown fields and bad values are
one-line errors naming the field, every recipe resolves."""
import importlib
import math

import ml_collections
import pytest

from mntk.train import schema
from mntk.train.errors import ConfigError

RECIPES = ("digits", "kaist_cifar100", "osi_cifar100", "ttq_cifar10", "ternary_cifar100",
           "texas_eic_imagenet")
TFDS_RECIPES = RECIPES[1:]


def recipe(name, arg=None):
    module = importlib.import_module(f"recipes.{name}")
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves_with_and_without_smoke(name):
    for arg in (None, "smoke"):
        config = schema.resolve(recipe(name, arg))
        assert config.smoke == (arg == "smoke")
        # complete: every field of the table is there, defaults filled in
        for field in schema.FIELDS:
            node = config
            for part in field.path.split("."):
                node = node[part]


@pytest.mark.parametrize("name", TFDS_RECIPES)
def test_data_dir_is_a_field_of_every_tfds_recipe(name):
    config = schema.resolve(recipe(name), [("data.data_dir", "/data/tfds")])
    assert config.data.data_dir == "/data/tfds"


def test_defaults_come_from_the_table():
    given = {"data.name": "digits", "model.name": "digits_cnn"}
    config = schema.resolve({"data": {"name": "digits"}, "model": {"name": "digits_cnn"}})
    for field in schema.FIELDS:
        if field.path in given:
            continue
        node = config
        for part in field.path.split("."):
            node = node[part]
        expected = field.default
        assert (node == expected) or (hasattr(node, "to_dict") and node.to_dict() == expected), \
            field.path


@pytest.mark.parametrize("where, path, nearest", [
    ("override", "train.epochz", "train.epochs"),
    ("override", "tricks.srip.coeficient", "tricks.srip.coefficient"),
    ("recipe", "train.learnig_rate", "train.learning_rate"),
    ("recipe", "prune.sparsity_shedule", "prune.sparsity_schedule"),
])
def test_unknown_field_names_it_and_the_nearest(where, path, nearest):
    config = recipe("digits")
    overrides = []
    if where == "override":
        overrides = [(path, "3")]
    else:
        section, key = path.split(".")
        config[section][key] = 3
    with pytest.raises(ConfigError) as info:
        schema.resolve(config, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown" in message and path in message and f"did you mean {nearest}?" in message


def test_unknown_section_is_an_error():
    config = recipe("digits")
    config.trainn = ml_collections.ConfigDict({"epochs": 2})
    with pytest.raises(ConfigError, match=r"unknown recipe field trainn \(did you mean train\?\)"):
        schema.resolve(config)


@pytest.mark.parametrize("path, text, problem", [
    ("train.learning_rate", "-0.1", "> 0"),
    ("train.learning_rate", "0", "> 0"),
    ("prune.learning_rate", "nan", "> 0"),
    ("tricks.srip.coefficient", "-1e-2", ">= 0"),
    ("tricks.srip.coefficient", "nan", ">= 0"),
    ("tricks.srip.coefficient", "inf", ">= 0"),
    ("data.batch_size", "0", ">= 1"),
    ("train.epochs", "-1", ">= 0"),
    ("prune.target", "1.5", "[0, 1)"),
    ("early_exit.target.exit_rate", "2", "[0, 1]"),
    ("train.optimizer", "rmsprop", "'sgd', 'adam', 'adamw'"),
    ("train.epochs", "2.5", "must be int, got float"),
    ("train.nesterov", "maybe", "True or False"),
    ("export.kinds", "('float', 'int4')", "'int4'"),
])
def test_bad_values_are_one_line_errors_naming_field_and_value(path, text, problem):
    with pytest.raises(ConfigError) as info:
        schema.resolve(recipe("digits"), [(path, text)])
    message = str(info.value)
    assert "\n" not in message and path in message and problem in message


def test_overrides_are_typed_by_the_table():
    config = schema.resolve(recipe("digits"), [
        ("train.epochs", "3"), ("train.learning_rate", "1e-2"), ("data.image_size", "None"),
        ("stages", "train,export"), ("export.kinds", "('int8',)"),
        ("model.kwargs.width", "8"), ("tricks.srip.enabled", "false")])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert math.isclose(config.train.learning_rate, 1e-2)
    assert config.data.image_size is None
    assert config.stages == ("train", "export") and config.export.kinds == ("int8",)
    assert config.model.kwargs.width == 8 and config.tricks.srip.enabled is False


def test_required_fields_are_named_when_their_stage_runs():
    config = recipe("digits")
    config.stages = ("train", "quantize")
    del config["quantize"]
    with pytest.raises(ConfigError, match="quantize.scheme is required when config.stages "
                                          "holds 'quantize'"):
        schema.resolve(config)


def test_resolved_config_is_locked_and_reresolvable():
    config = schema.resolve(recipe("kaist_cifar100"))
    with pytest.raises(AttributeError):
        config.train.epochz = 3
    assert schema.to_dict(schema.resolve(config)) == schema.to_dict(config)


def test_stage_sections_inherit_train_optimizer_fields():
    config = schema.resolve(recipe("digits"))
    merged = schema.section_train_config(config, "prune")
    assert merged.learning_rate == 1e-3 and merged.epochs == 4     # the prune section's
    assert merged.optimizer == config.train.optimizer == "adam"   # train's
    assert merged.schedule == "cosine"
