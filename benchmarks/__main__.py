"""Discover and run benchmarks; print one JSON line per figure."""
import importlib
import json
import os
import pkgutil
import sys
import time
import traceback

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def discover():
    """{"module.bench_name": function} for every benchmark function."""
    import benchmarks
    found = {}
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        for attr in sorted(dir(module)):
            if attr.startswith("bench_") and callable(getattr(module, attr)):
                found[f"{info.name}.{attr[len('bench_'):]}"] = getattr(module, attr)
    return found


def main(argv):
    found = discover()
    wanted = argv or list(found)
    selected = [k for k in found if any(k == w or k.startswith(w + ".") or
                                        k.split(".", 1)[1] == w for w in wanted)]
    missing = [w for w in wanted if not any(k == w or k.startswith(w + ".") or
                                            k.split(".", 1)[1] == w for k in found)]
    if missing:
        print(f"bench: unknown benchmark(s) {missing}; known: {', '.join(found)}",
              file=sys.stderr)
        return 2
    failed = 0
    for key in selected:
        start = time.time()
        try:
            figures = found[key]()
        except Exception:  # report and go on with the next benchmark
            traceback.print_exc()
            print(json.dumps({"name": key, "error": True}), flush=True)
            failed += 1
            continue
        for fig in figures:
            print(json.dumps({"benchmark": key, **fig}), flush=True)
        print(f"# {key}: {time.time() - start:.1f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
