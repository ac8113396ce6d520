"""mntk benchmarks: modules ``benchmarks/<topic>.py`` with ``bench_<name>()``
functions, each returning a list of ``{"name", "value", "unit", ...}`` dicts.
Run them with ``bin/bench [NAME...]``; ratios are measured within one run.
"""
