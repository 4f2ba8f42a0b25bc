"""The package's shape: small modules, no import cycle (module level or inside functions), and the ARCHITECTURE.md
example of adding an attack runs as written."""

import ast
import pathlib
import re

import numpy as np
import tensorflow as tf

from conftest import ROOT

PACKAGE = ROOT / "tf_fastbat"
MAX_LINES = 350


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: pathlib.Path, known) -> set:
    """The package modules `path` imports anywhere in its code. Importing a submodule runs its packages too,
    except the importer's own ancestors, which Python has already started."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("tf_fastbat"):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    own = module_name(path).split(".")
    return found - {".".join(own[:i]) for i in range(1, len(own) + 1)}


def test_no_module_is_long():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert not {name: n for name, n in long.items() if n > MAX_LINES}


def test_no_import_cycle():
    known = modules()
    graph = {name: imported(path, known) for name, path in known.items()}
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_architecture_example_adds_an_attack():
    from tf_fastbat import attacks, evaluation

    text = (ROOT / "ARCHITECTURE.md").read_text()
    code = re.search(r"## Adding an attack.*?```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code, "ARCHITECTURE.md", "exec"), namespace)
    assert "noise" in attacks.names()
    w = np.zeros((12, 2), np.float32)
    w[:, 0] = 1.0
    logits_fn = lambda images: tf.reshape(images, [-1, 12]) @ w  # noqa: E731  class 0 always wins
    x = np.random.default_rng(0).uniform(0, 1, (8, 2, 2, 3)).astype(np.float32)
    y = np.array([0, 1] * 4)
    result = evaluation.robustness(logits_fn, x, y, [8 / 255], [attacks.build("noise", evaluation.Settings())])
    assert result["clean_accuracy"] == 0.5 and result["robust_accuracy"] == {"noise": {"8/255": 0.5}}


WORKDIR_FILES = ("config.json", "report.json", "report.md", "training_log.csv", "best.json", "best.keras",
                 "last.keras", "extra_eval.json", "command.txt", "train.log", '"backup"')


def test_only_the_record_module_spells_a_workdir_file_name():
    """A workdir's layout is written once (tf_fastbat/record.py): the package and the benchmarks ask it."""
    sources = {path: path.read_text() for folder in (PACKAGE, ROOT / "benchmarks") for path in folder.rglob("*.py")}
    spelled = {}
    for path, text in sources.items():
        if path == PACKAGE / "record.py":
            continue
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may name files
        code = re.sub(r'"""(.|\n)*?"""', "", code)  # so may docstrings
        found = [name for name in WORKDIR_FILES if name in code]
        if found:
            spelled[str(path.relative_to(ROOT))] = found
    assert not spelled, spelled


# Layers, lowest first: a module imports its own layer or lower ones, never a higher one (tools over assembly over
# parts over the foundation). A module not listed is in the layer of its package.
LAYERS = (
    ("foundation", ("tf_fastbat", "errors", "units", "fields", "flagtypes", "runtime", "checkpoints", "record",
                    "progress", "report", "linf", "running_averages", "interrupt", "pretrained", "serving.protocol")),
    ("parts", ("models", "data", "methods", "attacks", "optim", "serving", "plots", "distribution", "backup",
               "weight_averaging")),
    ("assembly", ("metrics", "evaluation", "trainer", "trainer_inputs", "callbacks", "resume", "artifacts",
                  "publish")),
    ("tools", ("cli", "config", "method_flags", "attack_flags", "train", "evaluate", "export", "convert",
               "serving.client")),
)


def layer_of(module: str) -> int:
    name = module[len("tf_fastbat."):] if module != "tf_fastbat" else module
    for level, (_, members) in enumerate(LAYERS):
        if name in members:
            return level
    for level, (_, members) in enumerate(LAYERS):  # a package's modules are in the package's layer
        if any(name.startswith(f"{member}.") for member in members):
            return level
    raise AssertionError(f"{module}: in no layer of test_architecture.LAYERS")


def test_no_module_imports_a_higher_layer():
    known = modules()
    upward = {name: sorted(t for t in imported(path, known) if layer_of(t) > layer_of(name))
              for name, path in known.items() if name != "tf_fastbat"}  # the package's lazy public facade
    assert not {name: targets for name, targets in upward.items() if targets}


# Library errors name parameters ("eps=8: must be ..."), never command-line flags: the command-line runner words
# a leading parameter as the running tool's flag (tf_fastbat.cli.flag_form). Only the tools layer spells flags.
FLAG = re.compile(r"--[a-z]")
FOREIGN_OPTIONS = ("pip install --no-deps",)  # another program's option quoted in a message, not one of ours
# Files still to be converted by another change; empty this tuple as they are done.
EXCLUDED = ()  # modules allowed to name a flag in a message: none


def _message_text(node: ast.AST) -> str:
    """A string constant, or an f-string with each placeholder as "x" (f"--{flag}=" reads "--x=")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_message_text(part) if isinstance(part, ast.Constant) else "x" for part in node.values)
    return ""


def _messages(tree: ast.AST):
    """(line, expression) of what reaches a user: a raised exception, warnings.warn, sys.stderr.write and
    print(..., file=sys.stderr)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.lineno, node.exc
        elif isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            to_stderr = called == "print" and any(k.arg == "file" and ast.unparse(k.value) == "sys.stderr"
                                                  for k in node.keywords)
            if called in ("warnings.warn", "sys.stderr.write") or to_stderr:
                yield node.lineno, node


def flags_in_messages(source: str):
    """[(line, text)] of the user-facing messages in `source` that name a command-line flag."""
    found = {}
    for line, expression in _messages(ast.parse(source)):
        for node in ast.walk(expression):
            text = _message_text(node)
            for option in FOREIGN_OPTIONS:
                text = text.replace(option, "")
            if FLAG.search(text):
                found.setdefault(line, text)
    return sorted(found.items())


def test_the_flag_scanner_sees_a_flag_in_a_message():
    source = '''
def check(eps, flag):
    """Docstrings and comments may name --eps."""  # so may comments: --eps
    if eps > 1:
        raise ValueError(f"--eps={eps}: must be a fraction")
    if not flag:
        raise UsageError(f"--{flag} is required")
    warnings.warn("pass " "--seed for a repeatable run")
    sys.stderr.write(f"WARNING: {eps}: lower --lr_max\\n")
    print("--verbose", file=sys.stderr)
    print("--not_a_message")
    raise ValueError(f"eps={eps}: must be a fraction in (0, 1]; pip install --no-deps x")
'''
    assert [line for line, _ in flags_in_messages(source)] == [5, 7, 8, 9, 10]


def test_no_library_error_names_a_flag():
    tools = next(level for level, (title, _) in enumerate(LAYERS) if title == "tools")
    named = {}
    for name, path in modules().items():
        relative = path.relative_to(ROOT).as_posix()
        if layer_of(name) == tools or relative.startswith(EXCLUDED):
            continue
        found = flags_in_messages(path.read_text())
        if found:
            named[relative] = found
    assert not named, named
