"""The recipe schema: a recipe read against the table of fields, checked and locked.

The table itself, ``FIELDS`` (every field the runner reads, its type, default
and check; the only place a default lives), is ``mntk.train.fields``; its
names are re-exported here. ``resolve(config, overrides)`` turns a recipe's
``ml_collections.ConfigDict`` (``recipes/*.py``) plus ``--config.a.b=value``
overrides into a complete, validated, locked ``ConfigDict``:

- every field of the table is present (the recipe's value, else the default);
- a field or section the table does not know is an error naming it and the
  nearest known one (``train.epochz`` -> "did you mean train.epochs?");
- values are checked for type and range at load (learning rates > 0,
  coefficients >= 0 and finite, batch sizes >= 1, fractions in [0, 1], ...);
  a bad value is a one-line ``ConfigError`` naming the field, the value and
  the fix.

``section_train_config`` merges a stage section's optimizer fields
(``stage_optimizer``) over ``train``'s; ``to_dict`` and ``field_docs`` write a
resolved config and the table out.
"""
import ast
import difflib
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import ml_collections

from mntk.train.errors import ConfigError
from mntk.train.fields import (  # noqa: F401  (re-exported: the table's names)
    BY_PATH, EXPORT_KINDS, F, FIELDS, INHERITED, OPTIMIZERS, OUTPUT_ONLY, SCHEDULES, SCHEMES,
    SECTIONS, STRATEGIES, Field, _number, at_least, below_one, each, fraction, non_negative,
    one_of, positive, skip_layers, stage_optimizer, sums_to_one)


# ------------------------------------------------------------------ resolving

def _nearest(path: str) -> str:
    """ ' (did you mean X?)' for the known path or section nearest to ``path``."""
    known = list(BY_PATH) + sorted(SECTIONS)
    section = path.rsplit(".", 1)[0] if "." in path else ""
    same = [k for k in known if k.rsplit(".", 1)[0] == section] if section else []
    match = difflib.get_close_matches(path, same, n=1, cutoff=0.6) or \
        difflib.get_close_matches(path, known, n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def unknown_field(path: str, where: str = "recipe") -> ConfigError:
    return ConfigError(f"unknown {where} field {path}{_nearest(path)}; the known fields "
                       "are listed in mntk/train/fields.py")


def _free_dict_of(path: str) -> Optional[str]:
    """The free-form dict field (``model.kwargs``) that ``path`` lies inside."""
    for known, field in BY_PATH.items():
        if field.type is dict and path.startswith(known + "."):
            return known
    return None


def _flatten(node, prefix: str, out: Dict[str, Any]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        field = BY_PATH.get(path)
        if field is not None:
            out[path] = value
        elif path in SECTIONS and isinstance(value, dict):
            _flatten(value, path + ".", out)
        elif path in SECTIONS and value is None:
            continue  # a recipe may blank out a section it does not use
        else:
            raise unknown_field(path)


def _plain(value):
    """ConfigDicts (and nested ones) as plain dicts; lists as tuples."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def parse_value(path: str, text: str):
    """A command-line override's text as the field's type."""
    field = BY_PATH.get(path)
    type_ = field.type if field is not None else None
    if field is not None and field.default is None and text in ("None", "none"):
        return None
    if type_ is str:
        return text
    if type_ is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{path}={text}: expected True or False")
    if type_ is float:
        try:
            return float(text)   # also nan and inf, which the checks then name
        except ValueError:
            raise ConfigError(f"--config.{path}={text}: expected a number") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if type_ is int:
            raise ConfigError(f"--config.{path}={text}: expected an integer") from None
        if type_ is tuple:  # train,export -> ('train', 'export')
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return text
    if type_ is tuple and isinstance(value, str):
        return (value,)
    return value


def _coerce(field: Field, value):
    """``value`` as ``field.type``, or a ConfigError naming what was expected."""
    if value is None:
        if field.default is None:
            return None
        raise _bad(field, value, f"must not be None (default {field.default!r})")
    t = field.type
    if t is object:
        return tuple(value) if isinstance(value, list) else value
    if t is float and _number(value):
        return float(value)
    if t is int and _number(value) and float(value).is_integer():
        return int(value)
    if t is tuple and isinstance(value, (tuple, list)):
        return tuple(value)
    if t is dict and isinstance(value, dict):
        return dict(value)
    if t in (bool, str) and isinstance(value, t):
        return value
    raise _bad(field, value, f"must be {t.__name__}, got {type(value).__name__}")


def _bad(field: Field, value, problem: str) -> ConfigError:
    hint = f" ({field.doc})" if field.doc else ""
    return ConfigError(f"recipe field {field.path}={value!r}: {problem}{hint}; set "
                       f"--config.{field.path}=... or fix the recipe")


def resolve(config, overrides: Iterable[Tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """The complete, checked, locked config of a recipe.

    Args:
      config: the recipe's ``ConfigDict`` (or dict); may leave fields out, may
        already be resolved.
      overrides: ``(dotted path, text)`` pairs from ``--config.a.b=text``.

    Raises:
      ConfigError: an unknown field or override, a value of the wrong type or
        out of range, or a field a listed stage needs that is unset.
    """
    given: Dict[str, Any] = {}
    _flatten(_plain(config), "", given)
    values = {path: _plain(field.default) for path, field in BY_PATH.items()}
    values.update(given)
    for path, text in overrides:
        inside = _free_dict_of(path)
        if path in BY_PATH:
            values[path] = parse_value(path, text)
        elif inside is not None:
            node = values[inside] = dict(values[inside] or {})
            *keys, last = path[len(inside) + 1:].split(".")
            for key in keys:
                node = node.setdefault(key, {})
            node[last] = parse_value(path, text)
        else:
            raise unknown_field(path, "--config override")
    for path, field in BY_PATH.items():
        values[path] = value = _coerce(field, values[path])
        if value is None:
            continue
        for check in field.checks:
            problem = check(value)
            if problem:
                raise _bad(field, value, problem)
    stages = values["stages"]
    for path, field in BY_PATH.items():
        if field.required_by and values[path] is None and (
                field.required_by == "always" or field.required_by in stages):
            when = "" if field.required_by == "always" else \
                f" when config.stages holds {field.required_by!r}"
            raise ConfigError(f"recipe field {path} is required{when} ({field.doc}); set "
                              f"--config.{path}=... or add it to the recipe")
    return _nest(values)


def _nest(values: Dict[str, Any]) -> ml_collections.ConfigDict:
    root: Dict[str, Any] = {}
    for path, value in values.items():
        node = root
        *sections, last = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    config = ml_collections.ConfigDict(root)
    config.lock()
    return config


def to_dict(config) -> Dict[str, Any]:
    """A resolved config as plain JSON-ready data (tuples as lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(_plain(config))


def section_train_config(config, section: str) -> ml_collections.ConfigDict:
    """``config.train`` with the optimizer fields a stage section sets
    (``stage_optimizer``): None keeps ``train``'s value."""
    merged = config.train.copy_and_resolve_references()
    for name, _, _ in INHERITED:
        value = config[section][name]
        if value is not None:
            merged[name] = value
    return merged


def field_docs(sections: Sequence[str] = ()) -> str:
    """The table as text (``path  type  default  doc``), for docs and --help."""
    rows = [f for f in FIELDS if not sections or f.path.split(".")[0] in sections]
    return "\n".join(f"{f.path:<40} {getattr(f.type, '__name__', f.type)!s:<6} "
                     f"{f.default!r:<18} {f.doc}" for f in rows)
