"""The package's imports run one way: parsed from the source (imports at the top of a file
and inside functions alike), they form no cycle, and an import inside a function is one
of the few that must be there, each for the reason its comment gives."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scratchformer"

# (module, what it imports inside a function): nothing else may.
DEFERRED = {
    ("scratchformer.__main__", "scratchformer.cli"),  # after the huge-pages re-exec, which would load JAX again
    ("scratchformer.plots", "matplotlib"),  # pyplot's start-up cost, paid by the figures alone
    ("scratchformer.plots", "matplotlib.pyplot"),
    ("scratchformer.plots", "matplotlib.ticker"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether inside a function) for every import in a module; a
    `from . import x` names the module x where there is one."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in known]
                found.extend((m, inside) for m in subs or [base])
            visit(child, inside)
    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the package __init__ of an imported
    submodule too, unless it encloses the importer: Python has it loaded already)."""
    known = modules()
    edges = {}
    for name, path in known.items():
        targets = set()
        for mod, _ in imports(name, path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in known and target != name and not name.startswith(target + "."):
                    targets.add(target)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_package_imports_form_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    edges = graph()
    edges["scratchformer.config"] = edges["scratchformer.config"] | {"scratchformer.cli"}
    assert find_cycle(edges) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_imports_inside_functions_are_only_the_deferred_ones():
    inside = {(name, mod) for name, path in modules().items() for mod, deferred in imports(name, path) if deferred}
    assert inside == DEFERRED


@pytest.mark.parametrize("lower,upper", [
    ("scratchformer.config", "scratchformer.tasks"), ("scratchformer.config", "scratchformer.optim"),
    ("scratchformer.runs", "scratchformer.loop"), ("scratchformer.train", "scratchformer.loop"),
    ("scratchformer.tasks", "scratchformer.plots"), ("scratchformer.layers", "scratchformer.models"),
])
def test_a_lower_layer_does_not_reach_up(lower, upper):
    """Reachability, not only direct imports: nothing below reaches what sits above it."""
    edges, seen, todo = graph(), set(), [lower]
    while todo:
        node = todo.pop()
        for nxt in edges[node] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert upper not in seen
