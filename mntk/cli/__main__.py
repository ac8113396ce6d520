"""``python -m mntk.cli``: the ``mntk`` command (``mntk.cli.run``)."""
from mntk.cli import run

if __name__ == "__main__":   # not when a tool imports every module (pkgutil.walk_packages)
    run()
