"""PyTorch checkpoints into Keras: torch modules written here after the zoo's and RobustBench's, random weights and
BatchNorm statistics, and the converted model's eval logits against torch's on real CIFAR-10 images."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from tf_fastbat import models
from tf_fastbat.models.layers import scaled
from tf_fastbat.models.torch_import import TorchImportError

WIDTH = 0.125
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the official datasets.py's
ACTIVATIONS = {"relu": nn.ReLU, "softplus": lambda: nn.Softplus(beta=10), "swish": nn.SiLU}


class Normalize(nn.Module):
    """The zoo's NormalizeByChannelMeanStd: buffers `mean` and `std`, saved with the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class PreActBlock(nn.Module):
    """The zoo's (and Wong et al.'s, RobustBench's) block; pytorch-cifar's projects bn-act(x) instead of x."""

    def __init__(self, cin, planes, stride, act, preact_shortcut):
        super().__init__()
        self.act, self.preact_shortcut = act, preact_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))

    def forward(self, x):
        out = self.act(self.bn1(x))
        shortcut = self.shortcut(out if self.preact_shortcut else x) if hasattr(self, "shortcut") else x
        return self.conv2(self.act(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, act="relu", final_bn=True, preact_shortcut=False, normalize=None):
        super().__init__()
        self.act, self.final_bn = ACTIVATIONS[act](), final_bn
        widths = [scaled(c, WIDTH) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        cin = widths[0]
        for stage, planes in enumerate(widths):
            blocks = []
            for stride in (1 if stage == 0 else 2, 1):
                blocks.append(PreActBlock(cin, planes, stride, self.act, preact_shortcut))
                cin = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        if final_bn:
            self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, 10)
        self.normalize = normalize

    def forward(self, x):
        x = self.normalize(x) if self.normalize is not None else x
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.final_bn:
            out = self.act(self.bn(out))
        return self.linear(out.mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride, act):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, act="relu", normalize=None):
        super().__init__()
        self.act = ACTIVATIONS[act]()
        widths = [scaled(c, WIDTH) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for stage, planes in enumerate(widths):
            blocks = []
            for stride in (1 if stage == 0 else 2, 1):
                blocks.append(BasicBlock(cin, planes, stride, self.act))
                cin = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, 10)
        self.normalize = normalize

    def forward(self, x):
        x = self.normalize(x) if self.normalize is not None else x
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(out.mean((2, 3)))


def named(*modules):
    """An nn.Sequential with the zoo's "<index>_<kind>" names (0_normalization, 1_activation...)."""
    kinds = {nn.BatchNorm2d: "normalization", nn.ReLU: "activation", nn.Conv2d: "convolution", nn.Dropout: "dropout"}
    return nn.Sequential(collections.OrderedDict((f"{i}_{kinds[type(m)]}", m) for i, m in enumerate(modules)))


class BasicUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block = named(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                           nn.BatchNorm2d(channels), nn.ReLU(), nn.Dropout(0.1),
                           nn.Conv2d(channels, channels, 3, 1, 1, bias=False))

    def forward(self, x):
        return x + self.block(x)


class DownsampleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.norm_act = named(nn.BatchNorm2d(cin), nn.ReLU())
        self.block = named(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                           nn.Dropout(0.1), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.downsample = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        x = self.norm_act(x)
        return self.block(x) + self.downsample(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, units):
        super().__init__()
        self.block = nn.Sequential(DownsampleUnit(cin, cout, stride), *(BasicUnit(cout) for _ in range(units)))

    def forward(self, x):
        return self.block(x)


class WRN16x8(nn.Module):
    def __init__(self, normalize=None):
        super().__init__()
        filters = [scaled(c, WIDTH) for c in (16, 128, 256, 512)]
        self.f = nn.Sequential(collections.OrderedDict([
            ("0_convolution", nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)),
            ("1_block", Block(filters[0], filters[1], 1, 2)), ("2_block", Block(filters[1], filters[2], 2, 2)),
            ("3_block", Block(filters[2], filters[3], 2, 2)), ("4_normalization", nn.BatchNorm2d(filters[3])),
            ("5_activation", nn.ReLU()), ("6_pooling", nn.AdaptiveAvgPool2d((1, 1))), ("7_flattening", nn.Flatten())]))
        self.linear = nn.Linear(filters[3], 10)
        self.normalize = normalize

    def forward(self, x):
        x = self.normalize(x) if self.normalize is not None else x
        return self.linear(self.f(x))


@pytest.fixture(autouse=True)
def seeded():
    """The same random torch weights on every run."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def images(cifar_slice):
    """16 real test images in [0, 1], NHWC for Keras."""
    return cifar_slice["x_test"][:16].astype(np.float32) / 255.0


def trained_statistics(model, cifar_slice):
    """Random BN affine parameters and running statistics of real images (train-mode forwards), then eval mode."""
    generator = torch.Generator().manual_seed(0)
    batches = torch.from_numpy(cifar_slice["x_train"][:64].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.momentum = None  # a cumulative average over the batches below
        model.train()
        for batch in batches.split(32):
            model(batch)
    return model.eval()


def torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def assert_same_logits(classifier, model, images):
    expected = torch_logits(model, images)
    assert np.abs(expected).max() > 0.1, "logits this small would hide a mismatch"
    np.testing.assert_allclose(classifier(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def zoo_preact(cifar_slice, tmp_path_factory):
    """The official trainer's file: model.normalize set before model.save(), so the buffers are in the state dict."""
    model = trained_statistics(PreActResNet18(normalize=Normalize(CIFAR10_MEAN, CIFAR10_STD)), cifar_slice)
    path = tmp_path_factory.mktemp("zoo") / "preact18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_zoo_preact_resnet18_file_gives_torch_logits(zoo_preact, images):
    model, path = zoo_preact
    classifier = models.from_torch(str(path), "preact_resnet18", width_multiplier=WIDTH)
    np.testing.assert_allclose(classifier.get_layer("normalize").input_mean, CIFAR10_MEAN)
    assert_same_logits(classifier, model, images)


@pytest.mark.parametrize("variant", ["data_parallel", "sequential_wrapper", "dict_holding_it"])
def test_prefixed_and_wrapped_state_dicts(zoo_preact, images, tmp_path, variant):
    model, _ = zoo_preact
    normalize, model.normalize = model.normalize, None
    try:
        if variant == "data_parallel":
            state = {f"module.{k}": v for k, v in model.state_dict().items()}
            state.update({"module.normalize.mean": normalize.mean, "module.normalize.std": normalize.std})
        elif variant == "sequential_wrapper":
            state = nn.Sequential(normalize, model).state_dict()  # 0.mean, 0.std, 1.conv1.weight...
        else:
            state = {"state_dict": {**model.state_dict(), "normalize.mean": normalize.mean,
                                    "normalize.std": normalize.std}, "epoch": 3}
        torch.save(state, tmp_path / "model.pth")
        classifier = models.from_torch(tmp_path / "model.pth", "preact_resnet18", width_multiplier=WIDTH)
    finally:
        model.normalize = normalize
    assert_same_logits(classifier, model, images)


def test_zoo_resnet18_with_softplus(cifar_slice, images, tmp_path):
    model = trained_statistics(ResNet18("softplus", normalize=Normalize(CIFAR10_MEAN, CIFAR10_STD)), cifar_slice)
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    classifier = models.from_torch(tmp_path / "resnet18.pth", "resnet18", activation="softplus", width_multiplier=WIDTH)
    assert_same_logits(classifier, model, images)


def test_zoo_wrn16_8(cifar_slice, images, tmp_path):
    model = trained_statistics(WRN16x8(normalize=Normalize(CIFAR10_MEAN, CIFAR10_STD)), cifar_slice)
    torch.save(model.state_dict(), tmp_path / "wrn.pth")
    classifier = models.from_torch(tmp_path / "wrn.pth", "wrn16_8", width_multiplier=WIDTH)
    assert_same_logits(classifier, model, images)


def test_robustbench_wong2020fast_layout(cifar_slice, images, tmp_path):
    """RobustBench's PreActResNet (no final BN) normalizing inside with constants that are not in its file."""
    model = trained_statistics(PreActResNet18(final_bn=False, normalize=Normalize(CIFAR10_MEAN, CIFAR10_STD)),
                               cifar_slice)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    torch.save(state, tmp_path / "Wong2020Fast.pt")
    with pytest.raises(TorchImportError, match="no input normalization"):
        models.from_torch(tmp_path / "Wong2020Fast.pt", "preact_resnet18", width_multiplier=WIDTH)
    classifier = models.from_torch(tmp_path / "Wong2020Fast.pt", "preact_resnet18", width_multiplier=WIDTH,
                                   mean=CIFAR10_MEAN, std=CIFAR10_STD)  # layout auto: no `bn.*`, so robustbench
    assert "final_bn" not in [layer.name for layer in classifier.layers]
    assert_same_logits(classifier, model, images)
    with pytest.raises(TorchImportError, match=r"preact_resnet18 \(zoo layout\): missing bn\.weight"):
        models.from_torch(state, "preact_resnet18", width_multiplier=WIDTH, layout="zoo", mean=CIFAR10_MEAN,
                          std=CIFAR10_STD)


def test_robustbench_andriushchenko2020understanding_file(cifar_slice, images, tmp_path):
    """[0, 1] inputs, no normalization, the file a dict of "last" and "best" state dicts, DataParallel names."""
    model = trained_statistics(PreActResNet18(final_bn=False), cifar_slice)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"last": state, "best": {k: torch.zeros_like(v) for k, v in state.items()}}, tmp_path / "A.pt")
    classifier = models.from_torch(tmp_path / "A.pt", "preact_resnet18", width_multiplier=WIDTH, layout="robustbench",
                                   mean=(0, 0, 0), std=(1, 1, 1))
    assert_same_logits(classifier, model, images)


def test_pytorch_cifar_layout_projects_the_preactivation(cifar_slice, images):
    model = trained_statistics(PreActResNet18("swish", final_bn=False, preact_shortcut=True), cifar_slice)
    classifier = models.from_torch(model.state_dict(), "preact_resnet18", activation="swish", width_multiplier=WIDTH,
                                   layout="kuangliu", mean=(0, 0, 0), std=(1, 1, 1))
    assert_same_logits(classifier, model, images)


def test_shape_and_architecture_mismatches_name_the_keys(zoo_preact):
    _, path = zoo_preact
    with pytest.raises(TorchImportError, match=r"conv1\.weight is \(8, 3, 3, 3\) there, \(64, 3, 3, 3\) here"):
        models.from_torch(path, "preact_resnet18")
    with pytest.raises(TorchImportError, match=r"not hold a wrn16_8 \(zoo layout\): missing f\.0_convolution\.weight"):
        models.from_torch(path, "wrn16_8", width_multiplier=WIDTH)
    with pytest.raises(TorchImportError, match=r"the given mean/std .* differ from"):
        models.from_torch(path, "preact_resnet18", width_multiplier=WIDTH, mean=(0.5,) * 3, std=(0.5,) * 3)


# ----------------------------------------------------------------------------------------------------------------
# The command.

def convert(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "tf_fastbat.convert", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_writes_a_loadable_keras_model(zoo_preact, images, tmp_path):
    model, path = zoo_preact
    output = tmp_path / "out" / "preact18.keras"
    result = convert(f"--torch_checkpoint={path}", "--architecture=preact_resnet18", f"--output={output}",
                     f"--width_multiplier={WIDTH}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {output}" in result.stdout
    assert_same_logits(models.load(str(output)), model, images)


@pytest.mark.parametrize("case,message", [
    ("missing", "missing layer3.0.shortcut.0.weight"),
    ("extra", "unexpected layer1.0.conv3.weight"),
    ("wrong_model", "does not hold a resnet18 (zoo layout)"),
])
@pytest.mark.slow
def test_cli_refuses_a_checkpoint_that_does_not_fit(zoo_preact, tmp_path, case, message):
    model, path = zoo_preact
    state = model.state_dict()
    if case == "missing":
        del state["layer3.0.shortcut.0.weight"]
    elif case == "extra":
        state["layer1.0.conv3.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(state, tmp_path / "model.pth")
    output = tmp_path / "model.keras"
    result = convert(f"--torch_checkpoint={tmp_path / 'model.pth'}", f"--output={output}",
                     "--architecture=resnet18" if case == "wrong_model" else "--architecture=preact_resnet18",
                     f"--width_multiplier={WIDTH}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "tf_fastbat.convert: error" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not output.exists()


@pytest.mark.slow
def test_importing_the_package_and_the_command_does_not_import_torch():
    code = ("import sys, tf_fastbat.models, tf_fastbat.models.torch_import, tf_fastbat.convert; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
