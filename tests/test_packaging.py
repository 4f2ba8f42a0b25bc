"""What `pip install .` gives: the dependencies the default dataset path imports, and the documented client command."""

import ast
import importlib.metadata
import importlib.util
import pathlib
import re
import sys
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement

from conftest import ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_by(distribution: str) -> set:
    """The distributions `distribution` requires in this environment (its extras left out)."""
    environment = {**default_environment(), "extra": ""}
    requirements = [Requirement(r) for r in importlib.metadata.requires(distribution) or []]
    return {canonical(r.name) for r in requirements if r.marker is None or r.marker.evaluate(environment)}


def lazy_imports(path: pathlib.Path) -> set:
    """Top-level modules imported inside `with epy.lazy_imports():` blocks of a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.With) and any("lazy_imports" in ast.unparse(i.context_expr) for i in node.items):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in inner.names}
                elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    found.add(inner.module.split(".")[0])
    return found


def test_every_module_tensorflow_datasets_imports_lazily_to_prepare_a_dataset_is_a_declared_dependency():
    """tensorflow_datasets' DatasetBuilder (every download_and_prepare, cifar10's included) imports some modules only
    when it runs; importlib_resources among them is declared by tfds only for Python < 3.9, so `pip install .` then
    `tf-fastbat-train --dataset=cifar10` failed with ModuleNotFoundError in a fresh environment."""
    ours = {canonical(Requirement(r).name) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]}
    pinned = {canonical(Requirement(line.split("#")[0].strip()).name)
              for line in (ROOT / "requirements.txt").read_text().splitlines() if line.split("#")[0].strip()}
    tfds = importlib.util.find_spec("tensorflow_datasets").submodule_search_locations[0]
    builder = pathlib.Path(tfds) / "core" / "dataset_builder.py"
    modules = lazy_imports(builder) - set(sys.stdlib_module_names) - {"tensorflow_datasets"}
    assert "importlib_resources" in modules  # what this test is about is still there
    provided = declared_by("tensorflow-datasets") | {"tensorflow-datasets"}
    for module in modules:
        name = canonical(module)
        assert name in provided or name in ours, f"{module}: imported by {builder.name}, declared by nobody"
        assert name in provided or name in pinned, f"{module}: in pyproject.toml but not in requirements.txt"


def test_the_client_is_documented_as_its_console_script_only():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tf-fastbat-client"] == "tf_fastbat.serving.client:console_main"
    for doc in ("README.md", "export/README.md"):
        text = (ROOT / doc).read_text()
        assert "tf-fastbat-client --rest=" in text, doc
        assert "python -m export.client" not in text, doc  # worked only from the repository's root
