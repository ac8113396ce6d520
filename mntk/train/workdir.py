"""One run per work directory, and a record of what it ran.

- ``WorkdirLock``: ``WORKDIR/.lock`` holds the pid and host of the run using
  the directory, created exclusively (``O_CREAT | O_EXCL``); a second run
  fails naming the holder. A lock left by a dead process on this host (a
  killed run) is taken over.
- ``record_config``: the resolved config is written to ``WORKDIR/config.json``
  when a run starts. A rerun whose config differs in anything but an
  output-only field (``schema.OUTPUT_ONLY``) fails naming the first differing
  field, unless ``force`` (take the new config, keep the finished stages) or
  ``restart_from=STAGE`` (remove that stage's folder and the later ones).
"""
import errno
import json
import os
import shutil
import socket
from typing import Any, Dict, List, Optional

from mntk.train import schema
from mntk.train.context import is_chief, write_json
from mntk.train.errors import RecipeError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """Exclusive use of a work directory by this process (the chief only: the
    workers of a multi-worker run share the chief's directory)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.held = False

    def __enter__(self):
        if not is_chief():
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    os.remove(self.path)  # a killed run's lock: take it over
                    continue
                raise RecipeError(
                    f"work directory {os.path.dirname(self.path)} is in use by pid "
                    f"{holder.get('pid', '?')} on host {holder.get('host', '?')} (lock file "
                    f"{self.path}); wait for that run, or remove the lock file if it is "
                    "gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RecipeError(f"could not take the lock {self.path}; remove it and rerun")

    def _holder(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.held:
            try:
                os.remove(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            self.held = False
        return False


def _first_difference(old: Any, new: Any, path: str = "") -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else key
            if sub in schema.OUTPUT_ONLY:
                continue
            if key not in old or key not in new:
                return sub
            found = _first_difference(old[key], new[key], sub)
            if found:
                return found
        return None
    return None if old == new else path


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def record_config(workdir: str, config, stage_names: List[str], force: bool = False,
                  restart_from: Optional[str] = None) -> None:
    """Write ``config.json``, or check a rerun's config against it (see module doc)."""
    path = os.path.join(workdir, "config.json")
    new = schema.to_dict(config)
    if restart_from is not None:
        if restart_from not in stage_names:
            raise RecipeError(f"--restart_from={restart_from!r} is not one of this run's "
                              f"stages: {', '.join(stage_names)}")
        first = stage_names.index(restart_from)
        for k, name in enumerate(stage_names):
            folder = os.path.join(workdir, "stages", f"{k}_{name}")
            if k >= first and os.path.isdir(folder) and is_chief():
                shutil.rmtree(folder)
        if is_chief() and os.path.exists(os.path.join(workdir, "summary.json")):
            os.remove(os.path.join(workdir, "summary.json"))
    elif os.path.exists(path) and not force:
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise RecipeError(f"{path} cannot be read ({e}); remove it, or rerun with --force "
                              "to record this run's config") from None
        field = _first_difference(old, new)
        if field is not None:
            node_old, node_new = old, new
            for part in field.split("."):
                node_old = node_old.get(part) if isinstance(node_old, dict) else None
                node_new = node_new.get(part) if isinstance(node_new, dict) else None
            raise RecipeError(
                f"{workdir} was run with a different config: {field} was "
                f"{_short(node_old)}, now {_short(node_new)}; use another --workdir, "
                "--restart_from=STAGE to redo STAGE and the stages after it, or --force "
                "to go on with the finished stages as they are")
    write_json(path, new)
