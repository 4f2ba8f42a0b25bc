"""python -m tf_fastbat.evaluate --model=PATH [--flagfile=...]: robustness evaluation the way the field reports it.

--model is a training workdir (its checkpoints/best.keras), a .keras file mapping [0, 1] NHWC images to logits, or
an exported SavedModel (its serving_default signature alone; a TF Serving DIR/NAME means its newest version).
Measured on the first --num_examples test examples: SA, RA under every --attacks entry (tf_fastbat.attacks) at
every test eps of --eps (1/255 units), and the gradient alignment at each eps. Writes the report JSON, a Markdown
table and PNG plots. The work is tf_fastbat.evaluation's; this module is the command.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from absl import flags

from tf_fastbat import artifacts, attack_flags, cli, flagtypes, record
from tf_fastbat.artifacts import Artifact
from tf_fastbat.attacks import base as attack_registry
from tf_fastbat.checkpoints import read_json
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS
TOOL = "tf_fastbat.evaluate"
RENAMED = (("batch_size", "attack_batch_size"),)  # (old, new)


def parse_attacks(values: Sequence[str]) -> List[str]:
    """--attacks: a comma list of registered attacks; `none` (clean accuracy only) stands alone."""
    known = (*attack_registry.names(), "none")
    attacks = [v.strip() for v in values if v.strip()]
    for name in attacks:
        if name not in known:
            raise UsageError(f"--attacks: unknown attack {name!r}; choose from {', '.join(known)}")
    if "none" in attacks and len(attacks) > 1:
        raise UsageError("--attacks=none means clean accuracy only; it cannot be combined with attacks")
    if not attacks:
        raise UsageError(f"--attacks is empty; choose from {', '.join(known)}")
    return [] if attacks == ["none"] else list(dict.fromkeys(attacks))


def read_config(artifact: Artifact) -> Dict:
    """The training flags recorded with the model (artifacts.recorded_settings), or {} for a model from elsewhere."""
    return artifacts.recorded_settings(artifact)


EXPORT_OUTPUTS = os.path.join("runs", "evaluate")  # under the current directory: <name>/ per export or shipped model


def output_paths(artifact: Artifact, output: Optional[str], workdir: Optional[str]) -> Dict[str, str]:
    """Where the report, table and plots go: --output's stem, else --workdir, else next to a .keras model (in its
    training workdir), else runs/evaluate/<name>/ for a SavedModel or a shipped model: never into an export, which
    TF Serving serves, nor into the installed package."""
    if output:
        stem = output[:-len(".json")] if output.endswith(".json") else output
        report_path = output
    else:
        if workdir:
            folder = workdir
        elif artifact.workdir and os.path.abspath(artifact.path) == os.path.abspath(artifact.workdir):
            folder = artifact.workdir
        elif artifact.kind == "keras" and artifact.checkpoint != "pretrained":  # never into the installed package
            folder = os.path.dirname(os.path.abspath(artifact.file))
        else:
            folder = os.path.abspath(os.path.join(EXPORT_OUTPUTS, artifact.label))
        in_own_workdir = artifact.workdir and os.path.abspath(folder) == os.path.abspath(artifact.workdir)
        stem = os.path.join(folder, "evaluation" if in_own_workdir else f"evaluation-{artifact.label}")
        report_path = stem + ".json"
    return {"report": report_path, "table": stem + ".md", "ra_vs_eps": stem + "-ra_vs_eps.png",
            "training_curves": stem + "-training_curves.png", "loss_landscape": stem + "-loss_landscape.png",
            "autoattack": stem + "-autoattack.png"}


def read_compare(paths: Sequence[str]) -> Dict[str, Dict]:
    """--compare report JSONs (of evaluate or train) by a short name, for the table and the RA plot."""
    reports = {}
    for path in paths:
        try:
            loaded = read_json(path)
        except ValueError as error:
            raise UsageError(f"--compare={error}") from error
        if loaded is None:
            raise UsageError(f"--compare={path}: no such file")
        if "robust_accuracy" not in loaded or "clean_accuracy" not in loaded:
            raise UsageError(f"--compare={path}: not a report (no clean_accuracy/robust_accuracy)")
        name = loaded.get("model_label") or os.path.splitext(os.path.basename(path))[0]
        reports[name if name not in reports else path] = loaded
    return reports


def write_plots(paths: Dict[str, str], name: str, result: Dict, compare: Dict[str, Dict], artifact: Artifact,
                logits_fn, x, y, eps_list: Sequence[float], seed: int) -> Dict[str, str]:
    """RA against eps (with --compare models), AutoAttack attack by attack, training curves (workdir models), loss
    landscape; -> written paths."""
    from tf_fastbat import metrics, plots

    written = {}
    if result["robust_accuracy"]:
        plots.robust_accuracy_vs_eps({name: result, **compare}, paths["ra_vs_eps"])
        written["ra_vs_eps"] = paths["ra_vs_eps"]
    if result.get("autoattack_details"):
        version = result["attack_settings"]["autoattack"]["version"]
        plots.autoattack_breakdown(result["autoattack_details"], paths["autoattack"],
                                   f"{name}: AutoAttack ({version}) on {result['num_examples']} examples\n"
                                   "RA left after each attack (orange: AutoAttack's)")
        written["autoattack"] = paths["autoattack"]
    run = record.Workdir(artifact.workdir) if artifact.workdir else None
    if run and os.path.isfile(run.training_log):
        plots.training_curves(run.training_log, paths["training_curves"], run.best_epoch())
        written["training_curves"] = paths["training_curves"]
    eps = max(eps_list, default=0)
    if eps > 0 and len(x):
        a, b, loss = metrics.loss_landscape(logits_fn, x[:1], y[:1], eps, seed)
        plots.loss_landscape(a, b, loss, paths["loss_landscape"],
                             f"{name}: loss around test example 0, eps {flagtypes.in_units(eps):g}/255")
        written["loss_landscape"] = paths["loss_landscape"]
    return written


def define_model_flags() -> None:
    flags.DEFINE_string("model", None, f"The model to evaluate: a training workdir (its {record.CHECKPOINT_FOLDER}/"
                        f"{record.checkpoint_file('best')}), a .keras file mapping [0, 1] NHWC images to logits, an "
                        "exported SavedModel directory (serving_default signature), or a shipped robust model, "
                        "pretrained:NAME (e.g. pretrained:cifar10_fast_bat_eps8).")
    cli.validator("model", artifacts.resolve)


def define_data_flags() -> None:
    flags.DEFINE_string("dataset", None, "A tensorflow_datasets name, npz:PATH or folder:PATH; its test split is used "
                        f"(default: the workdir's {record.CONFIG_FILE} dataset, a SavedModel's metadata, else cifar10).")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual-download directory (imagenet2012).")
    flags.DEFINE_integer("image_size", None, "Image size for folder:/imagenet2012 data (default: the workdir's, 224).")
    flags.DEFINE_integer("num_examples", -1, "Evaluate the first N test examples (-1: all).")
    cli.validator("num_examples", lambda v: v == -1 or v >= 1, lambda v: f"--num_examples={v}: must be >= 1 or -1")


def define_attack_flags() -> None:
    flagtypes.DEFINE_eps_list("eps", [], "Test eps list in 1/255 units, e.g. 4,8,12,16 (default: the workdir's "
                              "eval_eps or eps, else 8).")
    flags.DEFINE_list("attacks", ["pgd", "autoattack"], f"Comma list of {', '.join(attack_registry.names())} "
                      "(none: SA only).")
    cli.validator("attacks", lambda v: parse_attacks(v) is not None)
    attack_flags.define()  # each attack's own options (its Options dataclass): --pgd_steps, --aa_version, ...
    flags.DEFINE_string("surrogate", None, "Surrogate model of --attacks=transfer (same forms as --model).")
    flags.DEFINE_integer("seed", 0, "Seed of every attack's randomness.")
    flags.DEFINE_integer("attack_batch_size", 256, "Images per attack batch.")
    cli.validator("attack_batch_size", lambda v: v >= 1, lambda v: f"--attack_batch_size={v}: must be >= 1")
    flags.DEFINE_boolean("gradient_alignment", True, "Also measure the gradient alignment at each eps.")
    flags.register_multi_flags_validator(["attacks", "surrogate"], _check_surrogate)


def define_output_flags() -> None:
    flags.DEFINE_boolean("plots", True, "Write the PNG plots.")
    flags.DEFINE_list("compare", [], "Other report JSONs shown beside this model in the table and RA plot.")
    cli.validator("compare", lambda paths: read_compare(paths) is not None)
    flags.DEFINE_string("output", None, "Report JSON path; the table and plots take its stem (default: in --workdir, "
                        "else the training workdir or beside the .keras file; for a SavedModel runs/evaluate/<name>/ "
                        "in the current directory, never inside the export).")
    flags.DEFINE_string("workdir", None, "Folder for the outputs when --output is not given.")


def define_renamed_flags() -> None:
    for old, new in RENAMED:
        cli.renamed(old, new)


def define_flags() -> None:
    """The tool's flags by group, each with its check beside it."""
    attack_flags.option_flags()  # imports the attacks first: TensorFlow's own flags then stay out of the groups
    cli.define_groups([("Model", define_model_flags), ("Data", define_data_flags), ("Attacks", define_attack_flags),
                       ("Outputs", define_output_flags), ("", define_renamed_flags)])


def _check_surrogate(values: Dict) -> bool:
    """--surrogate goes with --attacks=transfer, and only with it."""
    if "transfer" in parse_attacks(values["attacks"]):
        if not values["surrogate"]:
            raise flags.ValidationError("--attacks=transfer needs --surrogate=PATH (a workdir, .keras file or "
                                        "SavedModel)")
        artifacts.resolve(values["surrogate"], "surrogate")
    elif values["surrogate"]:
        raise flags.ValidationError("--surrogate is only used by --attacks=transfer")
    return True


def _eps_list(f, config: Dict) -> List[float]:
    """--eps, else the workdir's eval_eps or eps (config.json keeps 1/255 units), else 8/255."""
    if f.eps:
        return list(f.eps)
    recorded = [str(e) for e in config.get("eval_eps") or []] or [str(config.get("eps", 8.0))]
    return flagtypes.fractions("eps", recorded)


def _saved_model_dataset(artifact: Artifact) -> Optional[str]:
    """The dataset an export's metadata names, if any."""
    if artifact.kind != "savedmodel":
        return None
    from tf_fastbat.serving.loading import load_metadata

    try:
        return (load_metadata(artifact.file) or {}).get("dataset")
    except (UsageError, ValueError, OSError):
        return None


def run(f=FLAGS) -> Dict:
    """Load, attack, write the report, table and plots; returns the report."""
    import numpy as np

    from tf_fastbat import __version__, evaluation, report
    from tf_fastbat.checkpoints import write_json_atomic
    from tf_fastbat.data.test_split import test_arrays

    artifact, attacks = artifacts.resolve(f.model), parse_attacks(f.attacks)
    surrogate = artifacts.resolve(f.surrogate, "surrogate") if "transfer" in attacks else None
    config = read_config(artifact)
    dataset = f.dataset or config.get("dataset") or _saved_model_dataset(artifact) or "cifar10"
    eps_list = _eps_list(f, config)
    paths = output_paths(artifact, f.output, f.workdir)
    compare = read_compare(f.compare)
    logits_fn = artifacts.load_logits_fn(artifact)
    surrogate_fn = artifacts.load_logits_fn(surrogate, "surrogate") if surrogate else None
    x, y = test_arrays(dataset, f.num_examples, f.data_dir or config.get("data_dir"),
                       f.manual_dir or config.get("manual_dir"), f.image_size or config.get("image_size") or 224,
                       f.seed)
    if not len(x):
        raise UsageError(f"--dataset={dataset}: the test split is empty")
    y = np.asarray(y).astype(np.int64)
    artifacts.check_model_fits(logits_fn, x, int(y.max()) + 1)
    if surrogate_fn is not None:
        artifacts.check_model_fits(surrogate_fn, x, int(y.max()) + 1, "surrogate")
    settings = evaluation.Settings(seed=f.seed, batch_size=f.attack_batch_size, options=attack_flags.options_from(f),
                                   surrogate=surrogate.path if surrogate else None,
                                   surrogate_label=surrogate.label if surrogate else None)
    print(f"Evaluating {artifact.path} ({artifact.kind}) on the first {len(x)} test examples of {dataset}; eps "
          f"{', '.join(report.eps_key(e) for e in eps_list)}; attacks: {', '.join(attacks) or 'none'}", flush=True)
    result = evaluation.evaluate_model(logits_fn, x, y, eps_list, attacks, settings, surrogate_fn,
                                       f.gradient_alignment, verbose=True)
    result = {"model": os.path.abspath(artifact.path), "model_label": artifact.label, "model_kind": artifact.kind,
              "model_file": os.path.abspath(artifact.file), "dataset": dataset, "split": "test",
              "examples": f"the first {len(x)} test examples", **result, "tf_fastbat_version": __version__}
    if surrogate:
        result["surrogate"] = os.path.abspath(surrogate.path)
    os.makedirs(os.path.dirname(os.path.abspath(paths["report"])), exist_ok=True)
    if f.plots:
        result["plots"] = write_plots(paths, artifact.label, result, compare, artifact, logits_fn, x, y, eps_list,
                                      f.seed)
    table = report.markdown_table({artifact.label: result, **compare})
    write_json_atomic(result, paths["report"])
    with open(paths["table"], "w") as out:
        out.write(table + "\n")
    print(f"\n{table}\n")
    for message in result["warnings"]:
        print(f"WARNING: {message}")
    print(f"wrote {paths['report']} and {paths['table']}" +
          (f" and {len(result.get('plots', {}))} plots" if result.get("plots") else ""))
    return result


def main(argv) -> None:
    run(FLAGS)


def console_main() -> None:
    cli.run(TOOL, define_flags, main)


if __name__ == "__main__":
    console_main()
