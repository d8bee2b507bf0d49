"""The module map of DESIGN.md: imports only go down the layers."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfssd"
# The user commands: python -m tfssd.<name>, installed as tfssd-<name> (setup.cfg).
COMMANDS = ("train", "evaluate", "predict", "convert", "inspect", "cluster", "benchmark",
            "network", "cluster_server", "export_tflite", "serve", "load")

LAYERS = {
    "tfssd": 0, "tfssd.config": 0, "tfssd.hyperparameter_table": 0,
    "tfssd.sagemaker_container": 0, "tfssd.files": 0,
    "tfssd.ops": 1, "tfssd.visualization": 1, "tfssd.image_check": 1, "tfssd.precision": 1,
    "tfssd.data": 2, "tfssd.model": 2, "tfssd.losses": 2, "tfssd.postprocess": 2,
    "tfssd.evaluation": 2, "tfssd.early_stopping": 2,
    "tfssd.sagemaker_metrics": 2, "tfssd.coco_metrics": 2,
    "tfssd.distribute": 3, "tfssd.training": 3, "tfssd.export": 3, "tfssd.tflite_export": 3,
    "tfssd.detectors": 3, "tfssd.serving": 3, "tfssd.serving_formats": 3,
    "tfssd.command": 4, "tfssd.hyperparameters": 4, "tfssd.benchmark_workers": 4,
    **{f"tfssd.{name}": 4 for name in COMMANDS},
}
ONLY_HYPERPARAMETERS_IMPORT_FLAGS = {"tfssd.hyperparameters", "tfssd.command",
                                     *(f"tfssd.{name}" for name in COMMANDS)}


def group(module: str) -> str:
    """The entry of LAYERS a module belongs to: itself, or its package (tfssd.data.pipeline)."""
    if module == "tfssd":
        return module
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is not in the module map; add it to README.md "
                         "(Architecture) and here")


def imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tfssd":
                yield module, [f"tfssd.{a.name}" for a in node.names]  # from tfssd import X
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield module, [node.module]
            elif isinstance(node, ast.Import):
                yield module, [a.name for a in node.names]


def test_imports_go_down_the_layers():
    violations = []
    for module, targets in imports():
        for target in targets:
            if not target.startswith("tfssd") or target == "tfssd":
                continue
            source, dest = group(module), group(target)
            if source == dest:
                continue
            if LAYERS[dest] > LAYERS[source]:
                violations.append(f"{module} (L{LAYERS[source]}) imports {target} "
                                  f"(L{LAYERS[dest]})")
            elif LAYERS[dest] == LAYERS[source] == 2:
                violations.append(f"{module} imports {target}: L2 groups never import each other")
    assert not violations, "\n".join(violations)


def test_deployment_never_imports_training_or_data():
    deployment = ("tfssd.export", "tfssd.tflite_export", "tfssd.detectors", "tfssd.serving",
                  "tfssd.serving_formats")
    for module, targets in imports():
        if group(module) in deployment:
            assert not [t for t in targets if t.startswith(("tfssd.training", "tfssd.data"))]


def test_only_the_entry_points_import_absl_flags():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            uses_flags = (isinstance(node, ast.ImportFrom) and node.module == "absl"
                          and any(a.name == "flags" for a in node.names)) or (
                isinstance(node, ast.Import) and any(a.name == "absl.flags" for a in node.names))
            if uses_flags:
                assert module in ONLY_HYPERPARAMETERS_IMPORT_FLAGS, module


def test_from_package_imports_are_checked():
    """``from tfssd import X`` counts as importing tfssd.X (it was once skipped)."""
    source = "from tfssd import training, config\nfrom tfssd.data import pipeline\n"
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "tfssd":
            found += [f"tfssd.{a.name}" for a in node.names]
    assert found == ["tfssd.training", "tfssd.config"]
    targets = [t for module, ts in imports() if module == "tfssd.training.trainer" for t in ts]
    assert "tfssd.export" in targets


def test_every_command_is_installed():
    setup = (PACKAGE.parent / "setup.cfg").read_text()
    for name in COMMANDS:
        assert f"tfssd-{name.replace('_', '-')} = tfssd.{name}:run" in setup, name
        assert (PACKAGE / f"{name}.py").is_file(), name


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long
