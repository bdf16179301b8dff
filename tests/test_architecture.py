"""The package's architecture, checked so that it stays true (docs/architecture.md).

- The layers contract of `pyproject.toml` (`[tool.importlinter]`), run with import-linter: a
  module imports only from its own layer or the layers below it, directly or through others.
- No `_private` module, and no `_private` name of a module, is imported from another package.
- No nlxc module is imported inside a function (a lazy import hides a cycle from the contract);
  only `nlxc.cli`, the top layer, imports lazily, to keep `nlxc --help` fast.
"""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nlxc"

# Modules that may import nlxc modules inside functions, and why.
LAZY_IMPORTS_ALLOWED = {"nlxc.cli": "the top layer; imports JAX and the library only for the command that needs them"}


def _modules():
    """(module name, is_package, path) of every module of the nlxc source tree."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        yield name, is_package, path


def _imports(name, is_package, tree):
    """(absolute module, imported names, node, inside a function) of every nlxc import."""
    package = name if is_package else name.rpartition(".")[0]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module == "nlxc" or module.startswith("nlxc."):
                    yield module, [a.name for a in child.names], child, in_function
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "nlxc" or alias.name.startswith("nlxc."):
                        yield alias.name, [], child, in_function
            yield from visit(child, nested)

    yield from visit(tree, False)


def _is_module(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _owner(module):
    """The package that owns `module`'s privacy: the package a `_private` module or name lives in."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_layers_contract_holds():
    """`lint-imports` (import-linter) with the contract of pyproject.toml."""
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        os.chdir(cwd)
    assert code == 0, "the layers contract of pyproject.toml is broken (run `lint-imports` for the chains)"


def test_no_private_module_or_name_is_imported_from_another_package():
    """A `_private` module belongs to the package it lives in, a `_private` name to the package of
    the module that defines it; only modules of that package (or of its subpackages) import them."""
    violations = []
    for name, is_package, path in _modules():
        importer = name if is_package else name.rpartition(".")[0]
        for module, names, node, _ in _imports(name, is_package, ast.parse(path.read_text())):
            owners = {module: _owner(module)}
            for n in names:
                if _is_module(f"{module}.{n}"):
                    owners[f"{module}.{n}"] = _owner(f"{module}.{n}")
                elif n.startswith("_") and not n.startswith("__"):
                    defining_package = module if (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file() \
                        else module.rpartition(".")[0]
                    owners[f"{module}.{n}"] = defining_package
            for target, owner in owners.items():
                if owner is not None and not (importer == owner or importer.startswith(owner + ".")):
                    violations.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert not violations, "private modules or names imported from another package:\n" + "\n".join(violations)


def test_no_nlxc_module_is_imported_inside_a_function():
    violations = []
    for name, is_package, path in _modules():
        if name in LAZY_IMPORTS_ALLOWED:
            continue
        for module, _, node, in_function in _imports(name, is_package, ast.parse(path.read_text())):
            if in_function:
                violations.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module} inside a function")
    assert not violations, "lazy imports of nlxc modules (fix the cycle instead):\n" + "\n".join(violations)


@pytest.mark.parametrize("example, expected", [
    ("nlxc.xc._base", "nlxc.xc"),
    ("nlxc._errors", "nlxc"),
    ("nlxc.scf", None),
])
def test_owner_of_a_private_module(example, expected):
    assert _owner(example) == expected
