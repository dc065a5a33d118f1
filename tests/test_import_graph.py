"""The import graph of capnas_tf/ has no cycle, and every import goes down the layers below (or stays
within one layer).

Layers, bottom to top (a module may import from its own layer and the layers below it):

    foundations   _startup, registry, io_utils, locking, distribute, checkpointing, metrics, captioner,
                  optimizers
    parts         data/, search_space/, decoders/, encoders, diagnostics; the package itself
                  (capnas_tf/__init__.py imports the parts whose Keras classes a saved model needs)
    export        export/: the SavedModel and the ONNX graph of a trained captioner
    evaluation    evaluation: captioning and scoring splits (loads a model through export)
    search        search/: strategies, hypergradients, the loop; its validation score uses evaluation
    config        config: every config dataclass; it checks names against the parts' and the search's
                  registries, so it sits above them. The parts and the search take configs as
                  arguments and name the classes only in annotations (`if TYPE_CHECKING:` imports).
    retrain       retrain: the discrete captioner trained from scratch, evaluated and exported
    jobs          jobs: search, retrain, pipeline as functions of typed configs
    flags         flags: the command line generated from the configs
    command lines train, evaluate, caption, genotype (`python -m capnas_tf.<name>`)

An edge M → T is every import statement of M, at module level or inside a function (lazy imports are
how a cycle hides), with relative imports resolved, `from package import submodule` read as an import
of the submodule, and the implicit import of T's parent packages (importing `capnas_tf.search.loop`
runs `capnas_tf/search/__init__.py` first) — except M's own parents, which Python has initialised
before M runs. Imports under `if TYPE_CHECKING:` never run and are left out.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "capnas_tf"

# Bottom to top; a module's layer is that of its longest listed prefix.
LAYERS = (
    ("foundations", ("capnas_tf._startup", "capnas_tf.registry", "capnas_tf.io_utils", "capnas_tf.locking",
                     "capnas_tf.distribute", "capnas_tf.checkpointing", "capnas_tf.metrics", "capnas_tf.captioner",
                     "capnas_tf.optimizers")),
    ("parts", ("capnas_tf", "capnas_tf.data", "capnas_tf.search_space", "capnas_tf.decoders", "capnas_tf.encoders",
               "capnas_tf.diagnostics")),
    ("export", ("capnas_tf.export",)),
    ("evaluation", ("capnas_tf.evaluation",)),
    ("search", ("capnas_tf.search",)),
    ("config", ("capnas_tf.config",)),
    ("retrain", ("capnas_tf.retrain",)),
    ("jobs", ("capnas_tf.jobs",)),
    ("flags", ("capnas_tf.flags",)),
    ("command lines", ("capnas_tf.train", "capnas_tf.evaluate", "capnas_tf.caption", "capnas_tf.genotype")),
)

# (importing module, imported module) pairs allowed to go up a layer, each with the reason it must.
# Empty: no lazy import is needed to keep the layers.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}


def package_modules() -> dict[str, str]:
    """{dotted module name: file path} of every module under capnas_tf/ (a package is its __init__)."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            modules[name.removesuffix(".__init__")] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node of `tree`, at any depth, except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]))
        else:
            yield from _import_nodes(node)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The capnas_tf modules that importing `module` runs (see the module docstring), itself excluded."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    targets = set()
    for node in _import_nodes(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    own_parents = set(_parents(module))
    edges = set()
    for target in targets:
        if target not in modules:  # not ours (TensorFlow, numpy, …)
            continue
        implicit = {parent for parent in _parents(target) if parent not in own_parents}
        edges.update({target} | implicit)
    edges.discard(module)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    return layer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, …, a], or None (depth-first search, iterative)."""
    state = {}  # module → "open" while on the current path, "done" after
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = "open"
        while stack:
            successor = next(stack[-1], None)
            if successor is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(successor) == "open":
                return path[path.index(successor):] + [successor]
            elif successor not in state:
                state[successor] = "open"
                path.append(successor)
                stack.append(iter(sorted(graph[successor])))
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in package_modules() if layer_of(m) is None)
    assert not unplaced, f"modules of no layer (add them to LAYERS): {unplaced}"


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_import_goes_up_a_layer():
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module) and (module, target) not in UPWARD_ALLOWED:
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) → {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports going up a layer:\n  " + "\n  ".join(upward)


@pytest.mark.parametrize("source, expected", [
    ("from capnas_tf.search.loop import run_search", {"capnas_tf.search.loop", "capnas_tf.search"}),
    ("from . import losses", {"capnas_tf.decoders.losses"}),
    ("from ..search_space import ops", {"capnas_tf.search_space.ops", "capnas_tf.search_space"}),
    ("def f():\n    from capnas_tf import evaluation", {"capnas_tf.evaluation"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from capnas_tf.config import SearchConfig", set()),
    # a name of its own package, read while that package's __init__ may still be running: an edge
    ("from capnas_tf.decoders import DECODERS", {"capnas_tf.decoders"}),
    ("import capnas_tf.io_utils", {"capnas_tf.io_utils"}),  # capnas_tf, its own parent, already runs
])
def test_edges_are_read_as_python_runs_them(tmp_path, source, expected):
    """The reading of imports itself, on a module `capnas_tf.decoders.probe` of the given source."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = package_modules()
    assert imported_modules("capnas_tf.decoders.probe", str(path), modules) == expected


def test_a_cycle_is_found_and_printed():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
