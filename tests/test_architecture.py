"""The package's shape holds itself: no import cycles (also through imports inside functions, which
cannot hide one), the faces that configs and reports import stay free of torch, and the spec's
names are the registries' names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.methods import METHODS, method_info, method_names
from ablate.roles import GROUPS
from ablate.spec import FIELD_ROLES, TrialConfig, ignored_fields
from ablate.sweep.spec import SweepSpec

PACKAGE = Path(__file__).resolve().parents[1] / "ablate"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (annotations only: never executed)."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """module -> the ablate modules it imports (anywhere in the file, functions included; type-only
    imports left out), resolved like Python does."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports the module
                    candidate = f"{base}.{alias.name}"
                    targets.add(candidate if candidate in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "ablate.trainer" in graph and "ablate.backbone" in graph["ablate.trainer"]  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# The layers, bottom first: a module imports only from its own layer or below (type-only imports aside).
# A name ending in "." is every module under that package; the longest match decides.
LAYERS = [
    ("foundation", ["ablate.errors", "ablate.registry", "ablate.world.captions", "ablate.stats", "ablate.files",
                    "ablate.catalogue", "ablate.pathnames", "ablate.extras", "ablate.roles",
                    "ablate.secret_uri",
                    "ablate.userfiles",
                    "ablate.progress"]),
    ("config", ["ablate.world", "ablate.world.recipe", "ablate.data", "ablate.methods", "ablate.methods.registry",
                "ablate.probes", "ablate.probes.registry", "ablate.spec", "ablate.sweep.spec", "ablate.pack",
                "ablate.result", "ablate.published"]),
    ("model", ["ablate.backbone", "ablate.weight_files", "ablate.torchscript", "ablate.prompts", "ablate.aggregation",
               "ablate.loss", "ablate.metrics", "ablate.methods.", "ablate.world.pretrain", "ablate.world.checkpoints",
               "ablate.factory"]),
    ("training", ["ablate.features", "ablate.stream", "ablate.arm", "ablate.trainer", "ablate.probes.",
                  "ablate.world.effect", "ablate.pareto"]),
    ("orchestration", ["ablate.tracking", "ablate.sweep", "ablate.report", "ablate.server", "ablate.probes.analyze"]),
    ("entry", ["ablate.cli", "ablate.run", "ablate.probes.cli"]),
]


def layer_of(module: str) -> int | None:
    matches = [(len(name), i) for i, (_, names) in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name if name.endswith(".") else name + ".")]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    assert [m for m in graph if m != "ablate" and layer_of(m) is None] == [], "declare the new module's layer"
    upwards = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"  # type: ignore[index]
               for m, deps in sorted(graph.items()) if m != "ablate" for d in sorted(deps)
               if d != "ablate" and layer_of(d) > layer_of(m)]  # type: ignore[operator]
    assert not upwards, "\n".join(upwards)


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("ablate.data.features") == 1 and layer_of("ablate.features") == 3
    assert layer_of("ablate.methods.two_sided") == 2 and layer_of("ablate.methods") == 1
    assert layer_of("ablate.sweep") > layer_of("ablate.trainer") > layer_of("ablate.backbone")  # type: ignore[operator]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_model_layer_does_not_know_where_weights_come_from():
    graph = import_graph()
    assert not {"ablate.world.pretrain", "ablate.world.checkpoints", "ablate.factory"} & graph["ablate.backbone"]


def test_only_the_entry_points_build_world_checkpoints():
    """Building a world CLIP is one explicit step: the sweep's pre-flight and the commands take it, never loading."""
    calls = re.compile(r"\bbuild_(checkpoint|for)\(")
    callers = sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                     if calls.search(p.read_text()) and _module_name(p) != "ablate.world.checkpoints")
    assert callers == ["ablate.cli", "ablate.probes.analyze", "ablate.probes.cli", "ablate.sweep.preflight"]


@pytest.mark.parametrize("module", ["ablate.spec", "ablate.methods", "ablate.data", "ablate.probes", "ablate.report",
                                    "ablate.cli", "ablate.data.check", "ablate.data.fetch", "ablate.sweep",
                                    "ablate.sweep.arms", "ablate.catalogue"])
def test_configs_registries_reports_and_the_cli_import_without_torch(module):
    """(the config layer itself, ablate.spec, is held to more below)"""
    code = (f"import sys, {module}; heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')]; "
            "print(heavy[:3]); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"{module} imports {out.stdout.strip()} {out.stderr[-500:]}"


def test_the_config_layer_imports_no_heavy_library():
    heavy = ("torch", "PIL", "pycocotools", "ray", "mlflow", "matplotlib", "open_clip")
    code = (f"import sys, ablate.spec, ablate.sweep.spec; heavy = sorted({{m.split('.')[0] for m in sys.modules}} "
            f"& set({heavy!r})); print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"ablate.spec imports {out.stdout.strip()} {out.stderr[-500:]}"


def test_the_sweep_face_and_its_arms_import_no_ray():
    code = ("import sys, ablate.sweep, ablate.sweep.arms; ablate.sweep.expand; "
            "heavy = [m for m in sys.modules if m.split('.')[0] == 'ray']; print(heavy[:3]); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"ablate.sweep imports {out.stdout.strip()} {out.stderr[-500:]}"


def test_spec_accepts_exactly_the_registered_methods():
    for name in method_names():
        assert TrialConfig(method=name).method == name
    with pytest.raises(ValueError, match="unknown method 'maple'; registered: " + ", ".join(method_names())):
        TrialConfig(method="maple")
    with pytest.raises(ValueError, match="per_method.maple: unknown method"):
        SweepSpec(name="s", per_method={"maple": {"lr": 1.0}})


@pytest.mark.parametrize("name", method_names())
def test_every_method_declares_fields_the_config_has(name):
    info = method_info(name)
    assert info.reads <= set(GROUPS) - {"all"}
    assert ignored_fields(name) == {f for f, r in FIELD_ROLES.items() if r.reads not in info.reads | {"all"}}
    assert info.text_encoder or not ({"prompt", "hand_prompt"} & info.reads)  # prompts need the text tower


def test_registry_refuses_duplicates_and_names_the_registered():
    from ablate.errors import ConfigError

    with pytest.raises(ConfigError, match="already registered"):
        METHODS.register("dualcoop", method_info("dualcoop"))
    with pytest.raises(ConfigError, match="unknown method 'nope'; registered: dualcoop"):
        METHODS.get("nope")


def test_every_mlflow_client_call_goes_through_the_retry():
    """A store locked by another writer or a tracking server restarting is waited out everywhere (sweeps, report,
    analyze), not only where someone remembered: no `client.<method>(...)` call outside `retried(...)`."""
    direct = re.compile(r"(?<!retried\()(?<![\w.])(self\.)?client\.\w+\(")
    bypass = [f"{_module_name(p)}:{n}" for p in PACKAGE.rglob("*.py")
              for n, line in enumerate(p.read_text().splitlines(), 1) if direct.search(line)]
    assert bypass == [], "wrap these in ablate.tracking.retried(client.method, ...)"
    assert direct.search("runs = client.search_runs([exp])") and not direct.search("retried(client.get_run, rid)")
