"""The structure the tables rely on: no import cycles between llmquant's modules, and recipes
(with every method's config) validate without importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llmquant"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _imports(path: Path, name: str, is_pkg: bool, known: set[str]) -> set[str]:
    """llmquant modules `path` imports when it is imported (module level; not under TYPE_CHECKING)."""
    pkg = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        stmts = node.body if isinstance(node, ast.Try) else [node]
        for n in stmts:
            if isinstance(n, ast.Import):
                found |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)] if n.level else []
                mod = ".".join(base + ([n.module] if n.module else []))
                subs = {f"{mod}.{a.name}" for a in n.names} & known
                found |= subs if len(subs) == len(n.names) else subs | {mod}
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = {name: _imports(p, name, is_pkg, set(mods)) for name, (p, is_pkg) in mods.items()}
    assert graph["llmquant.recipe"] >= {"llmquant.quantize", "llmquant.schema"}  # the walk sees imports
    assert _cycles(graph) == []


def test_recipes_and_method_configs_validate_without_torch():
    code = ("import sys; from llmquant.recipe import load_recipe; from llmquant.quantize import variant_configs; "
            "variant_configs(); load_recipe('recipes/smollm2-demo.yaml'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
