"""One vocabulary across the tools (README "Flags"): every tool's --help lists its own flags by group and none of
absl's or TensorFlow's, each name the README's table gives a tool is one of its flags, and every renamed flag's
old name still sets the new one with exactly one deprecation line."""

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

MODULES = {"train": "tf_fastbat.train", "evaluate": "tf_fastbat.evaluate", "export": "tf_fastbat.export",
           "convert": "tf_fastbat.convert", "client": "tf_fastbat.serving.client"}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
# Flags of absl's own modules and of TensorFlow that --helpfull lists and --help must not.
FOREIGN = ("only_check_args", "pdb_post_mortem", "run_with_profiling", "logtostderr", "stderrthreshold", "test_srcdir",
           "test_tmpdir", "xml_output_file", "op_conversion_fallback_to_while_loop", "hbm_oom_exit",
           "tt_check_filter", "delta_threshold")


def run_tool(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", MODULES[tool], *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def helps():
    """Each tool's --help: (text, {group title: [flag names]}, deprecated old forms)."""
    out = {}
    for tool in MODULES:
        result = run_tool(tool, "--help")
        assert result.returncode == 0, result.stderr[-2000:]
        groups, deprecated, title = {}, [], None
        for line in result.stdout.splitlines():
            if re.match(r"^\S.*:$", line):
                title = line[:-1]
                groups.setdefault(title, [])
            elif title and title.startswith("Deprecated") and line.startswith("  --"):
                deprecated.append(line.split()[0])
            elif title and re.match(r"^  --\w", line):
                groups[title].append(line.split()[0].split("=")[0])
        out[tool] = (result.stdout, groups, deprecated)
    return out


def readme_table(heading_row: str) -> list:
    """The rows (lists of cells) of README's table under "## Flags" whose header starts with `heading_row`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Flags"):text.index("\n## ", text.index("## Flags") + 1)]
    lines = section[section.index(heading_row):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("tool,own,groups", [
    ("train", ["--workdir", "--architecture", "--model", "--batch_size", "--eval_pgd_steps", "--eval_pgd_restarts",
               "--es_pgd_steps", "--es_pgd_restarts", "--model_name", "--export_dir", "--method", "--eps",
               "--attack_lr", "--attack_steps", "--lmbda", "--pgi_lamda", "--liet_lambda", "--nuc_max",
               "--elle_optimizer_steps", "--label_smoothing", "--backup_every_steps"],
     ["Experiment", "Data", "Model", "Optimization", "Method (flags several methods share)", "Method fast_bat",
      "Method liet", "Backups"]),
    ("evaluate", ["--model", "--attacks", "--eps", "--pgd_steps", "--pgd_restarts", "--attack_batch_size",
                  "--num_examples", "--output"], ["Model", "Data", "Attacks", "Outputs"]),
    ("export", ["--model", "--export_dir", "--model_name", "--pgd_steps", "--pgd_restarts", "--eps"],
     ["Model and export", "Data", "Robustness measurement (written into the export's metadata)"]),
    ("convert", ["--torch_checkpoint", "--architecture", "--output", "--layout", "--mean"],
     ["Checkpoint and output", "Architecture", "Input normalization"]),
    ("client", ["--rest", "--grpc", "--model_name", "--request_batch_size", "--retries", "--npy"],
     ["Server", "Requests", "Inputs"]),
])
def test_help_lists_the_tools_own_flags_by_group_and_not_absls_or_tensorflows(helps, tool, own, groups):
    text, found, _ = helps[tool]
    listed = [name for names in found.values() for name in names]
    assert set(own) <= set(listed), sorted(set(own) - set(listed))
    assert set(groups) <= set(found), list(found)
    assert len(listed) == len(set(listed))  # each flag once
    assert not [name for name in FOREIGN if name in text]
    if tool == "train":  # what --help leaves out is there in --helpfull
        full = run_tool(tool, "--helpfull").stdout
        assert all(name in full for name in FOREIGN) and len(full.splitlines()) > len(text.splitlines())
    assert "Try --helpfull" not in text and len(text.splitlines()) < 300


def test_the_readme_table_names_only_flags_of_each_tool(helps):
    rows = readme_table("| concept |")
    tools = ["train", "evaluate", "export", "convert", "client"]
    assert len(rows) >= 10
    for row in rows:
        for tool, cell in zip(tools, row[1:]):
            listed = {name for names in helps[tool][1].values() for name in names}
            named = re.findall(r"`(--\w+)", cell)
            assert set(named) <= listed, (row[0], tool, sorted(set(named) - listed))


def fake_keras(path) -> str:
    with zipfile.ZipFile(path, "w") as archive:  # enough for the flag checks (a .keras archive), never loaded
        archive.writestr("config.json", "{}")
    return str(path)


# The tool's real flags and runner (cli.run) with a main that prints the values the tool would read.
VALUES = """
import importlib, json, sys
from absl import flags
from tf_fastbat import cli
module, function, positional, names = sys.argv[1], sys.argv[2], sys.argv[3] or None, json.loads(sys.argv[4])
define = getattr(importlib.import_module(module), function)
cli.run("tool", define, lambda argv: print(json.dumps({n: flags.FLAGS[n].value for n in names})),
        ["tool", *sys.argv[5:]], positional=positional)
"""
DEFINE = {"train": ("tf_fastbat.config", "define_training_flags"), "evaluate": ("tf_fastbat.evaluate", "define_flags"),
          "export": ("tf_fastbat.export", "define_flags"), "convert": ("tf_fastbat.convert", "define_flags"),
          "client": ("tf_fastbat.serving.client", "define_flags")}


def values_with(tool: str, args, names) -> subprocess.CompletedProcess:
    module, function = DEFINE[tool]
    return subprocess.run([sys.executable, "-c", VALUES, module, function, "FILE" if tool == "client" else "",
                           json.dumps(names), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def deprecation_lines(stderr: str):
    return [line for line in stderr.splitlines() if "is deprecated" in line]


@pytest.mark.parametrize("tool,required,renamed", [
    ("train", ["--workdir=w"], [("--es_attack_step=3", "es_pgd_steps", 3), ("--es_restarts=2", "es_pgd_restarts", 2),
                                ("--eval_attack_step=4", "eval_pgd_steps", 4),
                                ("--eval_restarts=5", "eval_pgd_restarts", 5), ("--attack_step=6", "attack_steps", 6),
                                ("--export_model_name=old_name", "model_name", "old_name"),
                                ("--model=wrn16_8", "architecture", "wrn16_8")]),
    ("evaluate", ["--model={keras}"], [("--batch_size=7", "attack_batch_size", 7)]),
    ("export", ["--export_dir=e"], [("--checkpoint={keras}", "model", "{keras}"), ("--attack_step=3", "pgd_steps", 3),
                                    ("--restarts=2", "pgd_restarts", 2)]),
    ("convert", ["--torch_checkpoint={keras}", "--output=o.keras"], [("--model=preact_resnet18", "architecture",
                                                                        "preact_resnet18")]),
    ("client", ["--rest=http://localhost:1", "a.png"], [("--batch_size=2", "request_batch_size", 2)]),
])
def test_every_old_name_still_sets_the_new_flag_with_one_deprecation_line(tmp_path, tool, required, renamed):
    keras_file = fake_keras(tmp_path / "model.keras")
    fill = lambda text: text.replace("{keras}", keras_file) if isinstance(text, str) else text  # noqa: E731
    old_args = [fill(arg) for arg, _, _ in renamed]
    names = [new for _, new, _ in renamed] + (["model"] if tool == "train" else [])
    # every old name, the first one twice: still one line each
    result = values_with(tool, [fill(a) for a in required] + old_args[:1] + old_args, names)
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values == {**{new: fill(value) for _, new, value in renamed}, **({"model": None} if tool == "train" else {})}
    lines = deprecation_lines(result.stderr)
    assert len(lines) == len(renamed), lines
    for arg, new, _ in renamed:
        mine = [line for line in lines if line.startswith((f"tool: {arg.split('=')[0]} is deprecated",
                                                           f"tool: {fill(arg)} is deprecated"))]
        assert len(mine) == 1 and f"use --{new}" in mine[0], (arg, lines)
    new_args = [f"--{new}={fill(value)}" for _, new, value in renamed]
    result = values_with(tool, [fill(a) for a in required] + new_args, names)
    assert result.returncode == 0 and not deprecation_lines(result.stderr), result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == values


def test_the_readme_lists_exactly_the_renamed_flags():
    documented = {}
    for tool, old, new in readme_table("| tool | old name |"):
        documented.setdefault(tool, []).extend(zip(re.findall(r"`(--\w+)", old), re.findall(r"`(--\w+)", new)))
    assert documented == {
        "train": [("--model", "--architecture"), ("--es_attack_step", "--es_pgd_steps"),
                  ("--es_restarts", "--es_pgd_restarts"), ("--eval_attack_step", "--eval_pgd_steps"),
                  ("--eval_restarts", "--eval_pgd_restarts"), ("--attack_step", "--attack_steps"),
                  ("--export_model_name", "--model_name")],
        "evaluate": [("--batch_size", "--attack_batch_size")],
        "export": [("--checkpoint", "--model"), ("--attack_step", "--pgd_steps"), ("--restarts", "--pgd_restarts")],
        "convert": [("--model", "--architecture")],
        "client": [("--batch_size", "--request_batch_size")]}
