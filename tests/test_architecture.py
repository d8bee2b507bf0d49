"""The module map of docs/architecture.md and the code agree, and imports only go down.

docs/architecture.md's table is the one place the map is written: every module of the package is a row
``| floor | `folder/module.py` | what it owns |``. A module missing from either side, imports
that go up a floor or sideways between the groups of one floor, and module names in strings
(``python -m tfssd.cli.train``, ``-c "from tfssd... import ..."``) that name no module all fail.
"""

import ast
import configparser
import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfssd"
ROW = re.compile(r"^\|\s*(\d)\s*\|\s*`([\w/]+\.py)`\s*\|")
NAME_IN_STRING = re.compile(r"\btfssd(?:\.\w+)+")


def documented_map() -> dict[str, int]:
    """module name -> floor, from the table of docs/architecture.md."""
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows["tfssd." + match.group(2).removesuffix(".py").replace("/", ".")] = int(
                match.group(1))
    return rows


def package_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                  for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def group(module: str) -> str:
    """A module's group: its folder under tfssd/, or the module itself at the top level
    (``api``, with the package that re-exports it; ``train``, the card's ``python -m
    tfssd.train``, stands above the commands)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def floors() -> dict[str, int]:
    """group -> floor; every module of a group must stand on the group's floor."""
    by_group: dict[str, set[int]] = {}
    for module, floor in documented_map().items():
        by_group.setdefault(group(module), set()).add(floor)
    mixed = {g: sorted(f) for g, f in by_group.items() if len(f) > 1}
    assert not mixed, f"docs/architecture.md puts the modules of one folder on several floors: {mixed}"
    return {g: f.pop() for g, f in by_group.items()}


def _module_exists(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def referenced_modules(name: str) -> str | None:
    """The longest prefix of ``tfssd.a.b.c`` that is a module or package, else None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if _module_exists(".".join(parts[:n])):
            return ".".join(parts[:n])
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module and its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _defines(module: str, name: str) -> bool:
    path = ROOT / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    text = path.read_text()
    return bool(re.search(rf"^(def|class) {name}\b|^{name}\b.*=|\"{name}\"", text, re.M))


def docstring_names():
    """(file, name) of every tfssd.x.y a docstring names."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) in docstrings:
                for name in NAME_IN_STRING.findall(node.value):
                    yield path.relative_to(ROOT), name


def imports():
    """(module, imported module names), from import statements and names in strings (such as
    ``-m tfssd.cli.train``; docstrings aside)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "tfssd"):
                # from tfssd.x import y: y is a module of its own or a name defined in tfssd.x.
                yield module, [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                yield module, [a.name for a in node.names if a.name.startswith("tfssd")]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docstrings):
                # A whole string that is a dotted name is a module (python -m, importlib);
                # inside code (python -c) a name may end in an attribute.
                whole = NAME_IN_STRING.fullmatch(node.value)
                yield module, [("module:" if whole else "") + name
                               for name in NAME_IN_STRING.findall(node.value)]


def test_readme_lists_every_module_and_no_other():
    listed, found = set(documented_map()), set(package_modules())
    assert not found - listed, f"modules missing from docs/architecture.md's table: " \
                               f"{sorted(found - listed)}"
    assert not listed - found, f"docs/architecture.md lists modules that do not exist: {sorted(listed - found)}"


def resolves(name: str) -> bool:
    """``name`` is a module (``module:`` prefix), or a module or an attribute of one."""
    if name.startswith("module:"):
        return _module_exists(name.removeprefix("module:"))
    module = referenced_modules(name)
    rest = name[len(module) + 1:].split(".") if module and module != name else []
    return module is not None and (not rest or _defines(module, rest[0]))


def test_imports_go_down_the_floors():
    floor = floors()
    violations = []
    for module, targets in imports():
        for target in targets:
            if not resolves(target):
                violations.append(f"{module} names {target}, which does not exist")
                continue
            target = target.removeprefix("module:")
            if target == "tfssd":
                continue
            resolved = referenced_modules(target)
            source, dest = group(module), group(resolved if resolved != "tfssd" else "tfssd.api")
            if source == dest:
                continue
            if floor[dest] > floor[source]:
                violations.append(f"{module} (floor {floor[source]}) uses {target} "
                                  f"(floor {floor[dest]})")
            elif floor[dest] == floor[source]:
                violations.append(f"{module} uses {target}: the groups of a floor never use "
                                  "each other")
    assert not violations, "\n".join(violations)


def test_names_in_strings_are_checked():
    """A module launched by name (-m, -c) counts as used; a stale name is caught."""
    used = {t for module, ts in imports() if module == "tfssd.cli.local_cluster" for t in ts}
    assert "module:tfssd.cli.train" in used
    assert resolves("module:tfssd.train")  # the card's module entry
    assert not resolves("module:tfssd.api.train")  # a function, not a module
    assert resolves("tfssd.train")  # the API function, as code such as python -c names it
    assert not resolves("tfssd.postprocess.detect")
    assert not resolves("tfssd.serving")  # as ``from tfssd import serving`` names it


def test_docstrings_name_what_exists():
    stale = [f"{path}: {name}" for path, name in docstring_names() if not resolves(name)]
    assert not stale, stale


def test_deployment_never_imports_training_or_data():
    for module, targets in imports():
        if group(module) == "deploy":
            assert not [t for t in targets if t.startswith(("tfssd.training", "tfssd.data"))]


def test_only_the_commands_import_absl_flags():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            uses_flags = (isinstance(node, ast.ImportFrom) and node.module == "absl"
                          and any(a.name == "flags" for a in node.names)) or (
                isinstance(node, ast.Import) and any(a.name == "absl.flags" for a in node.names))
            if uses_flags:
                assert group(module) == "cli", module


def test_every_command_is_installed_and_every_script_is_a_command():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   setup["options.entry_points"]["console_scripts"].strip().splitlines())
    commands = {p.stem for p in (PACKAGE / "cli").glob("*.py")
                if re.search(r"^def run\(\)", p.read_text(), re.M)}
    targets = {}
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        assert module.startswith("tfssd.cli.") and function == "run", script
        targets[module.removeprefix("tfssd.cli.")] = script
    assert set(targets) == commands, (set(targets) ^ commands)
    for module, script in targets.items():
        assert script.startswith("tfssd-"), script
        assert importlib.util.find_spec(f"tfssd.cli.{module}") is not None, module


def test_no_module_is_named_like_the_standard_library_or_differs_by_a_suffix():
    import sys

    names = [p.stem for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    clashes = sorted(n for n in names if n in sys.stdlib_module_names)
    assert not clashes, clashes
    for folder in {p.parent for p in PACKAGE.rglob("*.py")}:
        stems = sorted(p.stem for p in folder.glob("*.py") if p.name != "__init__.py")
        pairs = [(a, b) for a in stems for b in stems if a != b and b.startswith(a + "_")]
        assert not pairs, f"{folder.name}: {pairs}"


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long


def test_no_reference_to_files_that_do_not_exist():
    """Docstrings once cited a design document the repository does not have."""
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", path.read_text()):
            assert (ROOT / name).is_file(), f"{path.relative_to(ROOT)} cites {name}"


def test_modules_cited_by_file_name_exist():
    """``see export.py`` in a docstring outlived the move once; a cited file must exist (a bare
    name anywhere in the package, a path from tfssd/ or its folder exactly)."""
    names = {p.name for p in PACKAGE.rglob("*.py")}
    paths = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")} | {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    stale = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for cited in re.findall(r"[\w/]+\.py\b", path.read_text()):
            if not (cited in paths if "/" in cited else cited in names):
                stale.append(f"{path.relative_to(ROOT)} cites {cited}")
    assert not stale, stale
