"""Parametrizations whose first value runs in the fast suite and the rest
only with the ``slow`` tests (``bin/test --all``, CI): the fast suite checks
each capability once, CI checks every variant."""
import pytest


def fast_first(values, ids=None):
    """``values`` for ``pytest.mark.parametrize``, all but the first marked slow."""
    out = []
    for i, value in enumerate(values):
        kwargs = {"id": ids[i]} if ids else {}
        out.append(value if i == 0 and not ids else
                   pytest.param(value, marks=() if i == 0 else pytest.mark.slow, **kwargs))
    return out
