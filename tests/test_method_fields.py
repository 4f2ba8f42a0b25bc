"""A method's hyperparameters are written once, as dataclass fields with metadata (tf_fastbat.fields): the
library checks them naming the parameter, and the training tool makes each field's flag, help, parsing, the
chosen method's hyperparameters and config.json's keys from them. A toy method defined here, registered in one
line, is trained through the tool with its generated flag."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import ROOT
from tf_fastbat.methods import Method
from tf_fastbat.methods.common import train_on
from tf_fastbat.fields import HParamError, hparam, within


@dataclasses.dataclass(frozen=True)
class Toy(Method):
    """Trains on x + strength * noise (noise ~ U[-eps, eps]) clipped to the image box: one hyperparameter."""

    strength: float = hparam(1.0, "How much of the eps-ball noise the toy adds to each image.", flag="toy_strength",
                             check=within(0, 1))

    name = "toy"
    smoothed_losses = ("training",)

    def step(self, model, x, y, noise, context=None, loss_scale=None):
        x_noisy = tf.clip_by_value(x + self.strength * noise, 0.0, 1.0)
        return train_on(model, x_noisy, y, loss_scale, self.smoothing("training"))


def test_the_field_checks_itself_naming_the_parameter_and_the_tools_show_it_under_the_flag():
    assert Toy(strength=0.25).strength == 0.25
    with pytest.raises(HParamError) as error:
        Toy(strength=1.5)
    assert str(error.value) == "strength=1.5: must be in [0, 1]"
    assert error.value.for_flag("toy_strength") == "--toy_strength=1.5: must be in [0, 1]"
    with pytest.raises(HParamError) as error:  # a pixel fraction: the library's units, the flag's 1/255 units
        Toy(eps=300 / 255)
    assert str(error.value).startswith("eps=1.17647: the library takes fractions of the [0, 1] pixel range")
    assert error.value.for_flag("eps") == "--eps=300: must be in (0, 255] (1/255 units)"


# In a child process: the flags are process-wide. The toy registers with one line, then the tool's flags are made.
FLAGS_OF = """
import json, sys
sys.path.insert(0, "tests")
from absl import flags
from test_method_fields import Toy
from tf_fastbat import cli, config, methods
methods.register(Toy)
config.define_training_flags()
out = {}
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", "--workdir=w", *argv])
    except flags.Error as error:
        out[" ".join(argv)] = {"error": cli.flag_error_message(error)}
        continue
    hparams = config.method_hparams(flags.FLAGS)
    out[" ".join(argv)] = {"hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()},
                           "recorded": config.as_dict(flags.FLAGS)}
groups = [(title, names) for title, names in cli._GROUPS]
print(json.dumps({"parsed": out, "groups": groups, "help": cli.help_text("train")}))
"""


def parse_with_the_toy(*argvs):
    result = subprocess.run([sys.executable, "-c", FLAGS_OF, json.dumps([a.split() for a in argvs])], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_tool_makes_each_fields_flag_parsing_hparams_and_record_from_the_metadata():
    out = parse_with_the_toy("--method=toy --toy_strength=0.5", "--method=toy --toy_strength=2",
                             "--method=toy --toy_strength=0.5 --eps=4 --label_smoothing=0.1",
                             "--method=fgsm_pgi --pgi_lamda=3 --attack_lr=6",
                             "--method=liet --liet_lambda=5 --liet_mask_ratio=0.2,0.3 --epochs=7 --seed=11",
                             "--method=nu_at --epochs=30", "--method=nu_at --epochs=5",
                             "--method=nu_at --nuc_ramp_epochs=3",
                             "--method=elle_a --seed=4", "--method=pgd --attack_steps=4", "--method=standard --eps=0",
                             "--method=toy --attack_lr=4")
    parsed = out["parsed"]
    toy = parsed["--method=toy --toy_strength=0.5"]
    assert toy["hparams"] == {"eps": pytest.approx(8 / 255), "label_smoothing": 0.0, "strength": 0.5}
    assert toy["recorded"]["toy_strength"] == 0.5 and toy["recorded"]["method"] == "toy"
    assert parsed["--method=toy --toy_strength=2"] == {"error": "--toy_strength=2: must be in [0, 1]"}
    shared = parsed["--method=toy --toy_strength=0.5 --eps=4 --label_smoothing=0.1"]["hparams"]
    assert (shared["eps"], shared["label_smoothing"]) == (pytest.approx(4 / 255), 0.1)
    pgi = parsed["--method=fgsm_pgi --pgi_lamda=3 --attack_lr=6"]
    assert (pgi["hparams"]["lamda"], pgi["hparams"]["attack_lr"]) == (3.0, pytest.approx(6 / 255))
    assert (pgi["recorded"]["pgi_lamda"], pgi["recorded"]["attack_lr"]) == (3.0, 6.0)  # config.json: 1/255 units
    liet = parsed["--method=liet --liet_lambda=5 --liet_mask_ratio=0.2,0.3 --epochs=7 --seed=11"]["hparams"]
    assert (liet["consistency_weight"], liet["mask_ratio"], liet["ramp_epochs"], liet["seed"]) == (5.0, [0.2, 0.3],
                                                                                                      7.0, 11)
    # NuAT's official ramp: R = epochs - 10, at least 1, unless --nuc_ramp_epochs says otherwise
    ramps = [parsed[f"--method=nu_at {a}"]["hparams"]["nuc_ramp_epochs"]
             for a in ("--epochs=30", "--epochs=5", "--nuc_ramp_epochs=3")]
    assert ramps == [20.0, 1.0, 3.0]
    assert parsed["--method=elle_a --seed=4"]["hparams"]["seed"] == 4
    assert parsed["--method=pgd --attack_steps=4"]["hparams"]["steps"] == 4
    assert parsed["--method=standard --eps=0"]["hparams"]["eps"] == 0.0
    assert parsed["--method=toy --attack_lr=4"]["error"].startswith("--attack_lr=4: --method=toy does not take it")
    groups = dict((title, names) for title, names in out["groups"])
    assert groups["Method toy"] == ["toy_strength"]
    assert [name for title, names in out["groups"] for name in names].count("attack_lr") == 1  # shared: one flag
    assert "--toy_strength  [default: 1.0]\n      How much of the eps-ball noise the toy adds" in out["help"]


@pytest.mark.slow  # end to end: a training subprocess
def test_a_method_defined_and_registered_in_a_test_trains_through_the_tool(tmp_path):
    script = ("import sys; sys.path.insert(0, 'tests'); from test_method_fields import Toy; "
              "from tf_fastbat import methods, train; methods.register(Toy); train.console_main()")
    args = ["--method=toy", "--toy_strength=0.5", f"--workdir={tmp_path}", "--dataset=bundled:cifar10_slice",
            "--width_multiplier=0.125", "--batch_size=16", "--epochs=1", "--steps_per_epoch=2",
            "--es_num_examples=8", "--es_pgd_steps=1", "--es_pgd_restarts=1", "--eval_num_examples=8",
            "--eval_pgd_steps=1", "--eval_pgd_restarts=1", "--tensorboard=false"]
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["method"], config["toy_strength"]) == ("toy", 0.5)
    assert config["method_hparams"] == {"method": "toy", "eps": pytest.approx(8 / 255), "label_smoothing": 0.0,
                                        "strength": 0.5}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"]["strength"] == 0.5 and report["num_examples"] == 8
    assert (tmp_path / "checkpoints" / "last.keras").exists()
