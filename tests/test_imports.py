"""Import hygiene (issue 19): no import circles, imports at the top of each module.

- every module of girl_jax imports on its own in a fresh interpreter (a circle shows up as
  "partially initialized module");
- the module-level import graph has no cycle, even one that happens to import in some order;
- a function-local import says why it is local (`# optional: ...`, `# heavy: ...`, ...);
- `girl_jax.rl.registry` is a leaf the RL modules register into, and `girl --help` loads no jax.
"""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "girl_jax"


def _module_name(path: pathlib.Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _run(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


# One interpreter imports the third-party libraries (the slow part), then forks one child per
# module: each child starts with no girl_jax module loaded, so it imports its module exactly as
# `python -c "import M"` would, circles included, at a fraction of the cost.
_FORK_EACH = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    for lib in ("numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint",
                "ml_collections", "rich", "pandas", "pyarrow", "sklearn.metrics", "scipy.stats"):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    assert not any(m == "girl_jax" or m.startswith("girl_jax.") for m in sys.modules)
    failed = []
    for name in sys.argv[1:]:
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                sys.stderr.write(f"--- import {name} failed:\\n{traceback.format_exc()}")
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(name)
    print("FAILED:", " ".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_on_its_own():
    r = _run(_FORK_EACH, *MODULES, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]


def _imports_at_module_level(path: pathlib.Path) -> set[str]:
    """girl_jax modules `path` imports when it is imported (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    stmts = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try):
            stmts.extend(node.body)
        else:
            stmts.append(node)
    found = set()
    for node in stmts:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for dep in _imports_at_module_level(path):
            parts = dep.split(".")
            deps.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        # A module's own parent packages run first by Python's rules: not an edge of the graph.
        graph[name] = {
            d for d in deps if d in MODULES and d != name and not name.startswith(d + ".")
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circles_at_module_level():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _function_local_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    yield node


def test_function_local_imports_say_why():
    missing = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in _function_local_imports(path):
            here = lines[node.end_lineno - 1]
            above = lines[node.lineno - 2].strip()
            if "#" not in here and not above.startswith("#"):
                missing.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not missing, "function-local imports without a reason:\n" + "\n".join(missing)


def test_registry_is_a_leaf():
    r = _run(
        "import sys, girl_jax.rl.registry\n"
        "print(' '.join(m for m in sys.modules if m.startswith('girl_jax.')))"
    )
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "girl_jax.rl.registry" in loaded
    assert not loaded & {"girl_jax.rl.advantages", "girl_jax.rl.kl", "girl_jax.rl.losses"}, loaded


def test_cli_module_loads_no_jax():
    r = _run(
        "import sys, girl_jax.cli\nprint('jax' in sys.modules, 'girl_jax.stages' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
