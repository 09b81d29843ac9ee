"""The API's students equal the CLI's bit for bit for the same arguments and seed:
widen, deepen, morph and apply, with and without optimizer state, torch and numpy in."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import r2rc
from conftest import EXAMPLES, arch_body, same_bits

SMALL = EXAMPLES / "smallconv.arch"
CIFAR = EXAMPLES / "resnet_cifar10.arch"
R18 = EXAMPLES / "resnet18.arch"

# (id, arch, CLI words, API call, names, prove: "full", "local" or None). With --weights,
# -o and a local proof or none the CLI streams the teacher tensor by tensor: the API's
# in-memory student must still be the same bits.
CASES = [
    ("widen-layer", SMALL, ["widen", "--layer", "conv1", "--by", "1.5"],
     lambda a, s, **k: r2rc.widen(a, s, layer="conv1", by=1.5, **k), "r2rc", "full"),
    ("widen-stage-netmorph", CIFAR, ["widen", "--stage", "conv3_x", "--add", "8", "--method", "netmorph"],
     lambda a, s, **k: r2rc.widen(a, s, stage="conv3_x", add=8, method="netmorph", **k), "r2rc", "full"),
    ("widen-all-net2net-noise", CIFAR, ["widen", "--all", "--by", "2", "--method", "net2net", "--noise", "0.01"],
     lambda a, s, **k: r2rc.widen(a, s, all=True, by=2, method="net2net", noise=0.01, **k), "r2rc", "full"),
    ("widen-torchvision-unproved", R18, ["widen", "--layer", "layer2.0.conv1", "--to", "192"],
     lambda a, s, **k: r2rc.widen(a, s, layer="layer2.0.conv1", to=192, **k), "torchvision", None),
    ("deepen-r2r", SMALL, ["deepen", "--after", "conv1", "--method", "r2r"],
     lambda a, s, **k: r2rc.deepen(a, s, after="conv1", method="r2r", **k), "r2rc", "full"),
    ("deepen-net2net", CIFAR, ["deepen", "--after", "conv2_x", "--method", "net2net"],
     lambda a, s, **k: r2rc.deepen(a, s, after="conv2_x", method="net2net", **k), "r2rc", "full"),
    ("deepen-torchvision-local", R18, ["deepen", "--after", "layer3.1"],
     lambda a, s, **k: r2rc.deepen(a, s, after="layer3.1", **k), "torchvision", "local"),
    ("morph", SMALL, ["morph", "--layer", "conv1", "--kernel", "9"],
     lambda a, s, **k: r2rc.morph(a, s, layer="conv1", kernel=9, **k), "r2rc", "full"),
    ("morph-local", CIFAR, ["morph", "--layer", "conv2_1.conv1", "--kernel", "5"],
     lambda a, s, **k: r2rc.morph(a, s, layer="conv2_1.conv1", kernel=5, **k), "r2rc", "local"),
]

PROVE_FLAGS = {"full": [], "local": ["--prove", "local"], None: ["--no-prove"]}


def cli_student(cli, tmp_path, arch, words, weights, names, seed, prove, extra=()):
    out = tmp_path / "cli"
    flags = PROVE_FLAGS[prove]
    cli(*words[:1], arch, *words[1:], "--weights", weights, "--names", names, "--seed", seed,
        "-o", out, *flags, *extra)
    stem = arch.stem
    return load_file(out / f"{stem}.safetensors"), (out / f"{stem}.arch").read_text(), \
        json.loads((out / "report.json").read_text()), out


def assert_same_state(cli_sd, api_sd):
    assert sorted(cli_sd) == sorted(api_sd)
    for k in cli_sd:
        got = api_sd[k]
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        assert same_bits(cli_sd[k], got), f"tensor {k} differs from the CLI's"


def without_timings(report):
    """The report without its `timings` (seconds differ from run to run, and the CLI also
    times reading and writing files), after checking every one is a duration."""
    report = dict(report)
    for t in report.pop("timings", {}).values():
        assert isinstance(t, float) and t >= 0, f"timing {t!r}"
    if "steps" in report:
        report["steps"] = [without_timings(s) for s in report["steps"]]
    return report


def assert_same_report(cli_report, api_report, streamed=False):
    """report.json's fields; only where the teacher came from differs (and, when the CLI
    streamed, the notes saying so), and the seconds each phase took."""
    for r in cli_report.get("steps", [cli_report]):
        assert "prove" in r.get("timings", {}) or not r["proved"], "a proof reports its seconds"
    cli_report, api_report = without_timings(cli_report), without_timings(api_report)
    assert sorted(cli_report) == sorted(api_report)
    for k in cli_report:
        if k == "teacher" or (streamed and k == "notes"):
            continue
        assert cli_report[k] == api_report[k], f"report field {k}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_step_equals_cli(case, cli, teacher, tmp_path):
    _, arch_file, words, call, names, prove = case
    seed = 7
    w = teacher(arch_file, names)
    g = call(r2rc.Arch.load(arch_file), load_file(w), names=names, seed=seed, prove=prove)
    cli_sd, cli_arch, cli_report, _ = cli_student(cli, tmp_path, arch_file, words, w, names, seed, prove)
    assert_same_state(cli_sd, g.state_dict)
    assert arch_body(cli_arch) == str(g.arch)
    assert_same_report(cli_report, g.report, streamed=prove != "full")
    assert g.report["proved"] == (prove is not None)
    assert g.optimizer_state is None


def test_torch_in_torch_out(cli, teacher, tmp_path):
    w = teacher(SMALL)
    sd = {k: torch.from_numpy(v) for k, v in load_file(w).items()}
    g = r2rc.widen(r2rc.Arch.load(SMALL), sd, layer="fc1", add=10, seed=3)
    assert all(isinstance(v, torch.Tensor) for v in g.state_dict.values())
    assert g.state_dict["fc1.weight"].dtype == torch.float32
    assert g.state_dict["conv1.bn.num_batches_tracked"].dtype == torch.int64
    cli_sd, _, _, _ = cli_student(cli, tmp_path, SMALL, ["widen", "--layer", "fc1", "--add", "10"], w, "r2rc", 3, "full")
    assert_same_state(cli_sd, g.state_dict)


def test_f64_numpy_in_f64_out(cli, teacher, tmp_path):
    w = teacher(SMALL, dtype="f64")
    sd = load_file(w)
    g = r2rc.widen(r2rc.Arch.load(SMALL), sd, layer="conv1", by=2, method="net2net", seed=2)
    assert g.state_dict["conv1.weight"].dtype == np.float64
    cli_sd, _, _, _ = cli_student(cli, tmp_path, SMALL, ["widen", "--layer", "conv1", "--by", "2", "--method", "net2net"], w, "r2rc", 2, "full")
    assert_same_state(cli_sd, g.state_dict)


def test_apply_equals_cli(cli, teacher, tmp_path):
    w = teacher(CIFAR)
    plan = EXAMPLES / "cifar10_to_18.plan"
    g = r2rc.apply(r2rc.Arch.load(CIFAR), load_file(w), plan.read_text(), plan_name=str(plan), seed=4)
    out = tmp_path / "cli"
    cli("apply", CIFAR, plan, "--weights", w, "--seed", 4, "-o", out)
    assert_same_state(load_file(out / "resnet_cifar10.safetensors"), g.state_dict)
    assert arch_body((out / "resnet_cifar10.arch").read_text()) == str(g.arch)
    assert g.arch == r2rc.Arch.load(EXAMPLES / "resnet_cifar18.arch")
    assert_same_report(json.loads((out / "report.json").read_text()), g.report)
    assert len(g.report["steps"]) == 5 and g.report["proved"]


def random_moments(arch, seed):
    """Adam's state for every trainable tensor, flat as the CLI's optimizer file."""
    rng = np.random.default_rng(seed)
    trainable = {k: s for k, s in arch.shapes().items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    out = {}
    for k, shape in trainable.items():
        out[f"{k}.exp_avg"] = rng.standard_normal(shape).astype(np.float32)
        out[f"{k}.exp_avg_sq"] = rng.random(shape).astype(np.float32)
        out[f"{k}.step"] = np.array(5, dtype=np.int64)
    return out


@pytest.mark.parametrize("words,call", [
    (["widen", "--layer", "conv1", "--by", "1.5"], lambda a, s, **k: r2rc.widen(a, s, layer="conv1", by=1.5, **k)),
    (["deepen", "--after", "conv1"], lambda a, s, **k: r2rc.deepen(a, s, after="conv1", **k)),
    (["morph", "--layer", "conv1", "--kernel", "9"], lambda a, s, **k: r2rc.morph(a, s, layer="conv1", kernel=9, **k)),
], ids=["widen", "deepen", "morph"])
def test_optimizer_state_equals_cli(words, call, cli, teacher, tmp_path):
    w = teacher(SMALL)
    arch = r2rc.Arch.load(SMALL)
    m = random_moments(arch, 1)
    save_file(m, tmp_path / "adam.safetensors")
    g = call(arch, load_file(w), optimizer_state=m, seed=9)
    _, _, _, out = cli_student(cli, tmp_path, SMALL, words, w, "r2rc", 9, "full",
                               ["--optimizer-state", tmp_path / "adam.safetensors"])
    assert_same_state(load_file(out / "smallconv.optimizer.safetensors"), g.optimizer_state)


def test_apply_optimizer_state_equals_cli(cli, teacher, tmp_path):
    w = teacher(CIFAR)
    arch = r2rc.Arch.load(CIFAR)
    m = random_moments(arch, 2)
    save_file(m, tmp_path / "adam.safetensors")
    plan = EXAMPLES / "cifar10_to_18.plan"
    g = r2rc.apply(arch, load_file(w), plan.read_text(), optimizer_state=m, seed=1, prove=None)
    out = tmp_path / "cli"
    cli("apply", CIFAR, plan, "--weights", w, "--seed", 1, "--no-prove", "-o", out,
        "--optimizer-state", tmp_path / "adam.safetensors")
    assert_same_state(load_file(out / "resnet_cifar10.optimizer.safetensors"), g.optimizer_state)
    assert_same_state(load_file(out / "resnet_cifar10.safetensors"), g.state_dict)


def test_init_is_the_clis_random_teacher(cli, tmp_path):
    out = tmp_path / "w.safetensors"
    cli("init", CIFAR, "--random-stats", "--seed", 5, "-o", out)
    assert_same_state(load_file(out), r2rc.Arch.load(CIFAR).init(seed=5))
