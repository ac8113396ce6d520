"""mntk's modules import each other one way: no import cycles.

Walks every module under ``mntk/`` with ``ast`` (no import needed), takes
every ``import``/``from ... import`` (module level and inside functions) that
names an mntk module, and looks for a cycle in that graph. A package's
``__init__`` is not counted as imported by its submodules (Python runs it
first, but a submodule never reads names from it here).
"""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mntk")


def module_names():
    """{dotted module name: file path} of every module under mntk/."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))
                dotted = rel[:-3].replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[: -len(".__init__")]
                found[dotted] = os.path.join(folder, name)
    return found


def _resolve(name, modules):
    """The mntk module ``name`` refers to (a submodule, else its longest known prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph():
    modules = module_names()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                # `from pkg import sub` imports the submodule pkg.sub
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                if target.split(".")[0] != "mntk":
                    continue
                found = _resolve(target, modules)
                if found and found != module:
                    graph[module].add(found)
    # `from mntk.a import b` also lists mntk.a; when b is a submodule that is
    # the edge that counts, not the package's __init__
    for module, path in modules.items():
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    return graph


def find_cycle(graph):
    """A list of modules forming a cycle (first == last), or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_the_imports():
    graph = import_graph()
    assert "mntk.train.context" in graph["mntk.train.fit"]
    assert "mntk.train.stages.quantize" in graph["mntk.train.stages.finetune"]
    assert "mntk.train.loop" in graph["mntk.cli.commands"]   # function-level imports count too


def test_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
