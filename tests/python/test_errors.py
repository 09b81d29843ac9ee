"""Bad input raises R2rcError with the CLI's message and hint; a failed proof raises
ProofFailed carrying the evidence; wrong Python types raise TypeError."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import r2rc
from conftest import EXAMPLES

SMALL = EXAMPLES / "smallconv.arch"


@pytest.fixture(scope="module")
def small():
    arch = r2rc.Arch.load(SMALL)
    return arch, arch.init(seed=1)


def cli_error(cli, *args):
    """The CLI's error text (`error: ` stripped) and exit code."""
    p = cli(*args, ok=False)
    assert p.returncode != 0
    text = p.stderr.strip()
    assert text.startswith("error: "), text
    return text[len("error: "):], p.returncode


@pytest.mark.parametrize("kwargs,words", [
    (dict(layer="nope", by=1.5), ["--layer", "nope", "--by", "1.5"]),
    (dict(layer="conv1", by=1.5, method="bogus"), ["--layer", "conv1", "--by", "1.5", "--method", "bogus"]),
    (dict(layer="conv1", by=1.5, init="bogus"), ["--layer", "conv1", "--by", "1.5", "--init", "bogus"]),
    (dict(layer="fc2", by=2), ["--layer", "fc2", "--by", "2"]),
    (dict(layer="conv1", by=1.5, names="bogus"), ["--layer", "conv1", "--by", "1.5", "--names", "bogus"]),
], ids=["unknown-layer", "unknown-method", "unknown-init", "output-layer", "unknown-names"])
def test_widen_refusals_carry_the_clis_message(kwargs, words, small, cli, tmp_path):
    arch, sd = small
    w = tmp_path / "w.safetensors"
    save_file(sd, w)
    want, code = cli_error(cli, "widen", SMALL, *words, "--weights", w)
    with pytest.raises(r2rc.R2rcError) as e:
        r2rc.widen(arch, sd, **kwargs)
    assert str(e.value) == want
    assert e.value.exit_code == code == 2
    assert not isinstance(e.value, r2rc.ProofFailed)


def test_deepen_and_morph_refusals(small, cli, tmp_path):
    arch, sd = small
    w = tmp_path / "w.safetensors"
    save_file(sd, w)
    want, _ = cli_error(cli, "deepen", SMALL, "--after", "nowhere", "--weights", w)
    with pytest.raises(r2rc.R2rcError) as e:
        r2rc.deepen(arch, sd, after="nowhere")
    assert str(e.value) == want
    want, _ = cli_error(cli, "morph", SMALL, "--layer", "conv1", "--kernel", "4", "--weights", w)
    with pytest.raises(r2rc.R2rcError) as e:
        r2rc.morph(arch, sd, layer="conv1", kernel=4)
    assert str(e.value) == want


def test_bad_plan_line_names_the_line(small):
    arch, sd = small
    with pytest.raises(r2rc.R2rcError, match=r"^my.plan:2: cannot read plan line `widen --by 2`"):
        r2rc.apply(arch, sd, "deepen --after conv1\nwiden --by 2\n", plan_name="my.plan")
    with pytest.raises(r2rc.R2rcError, match="my.plan has no steps"):
        r2rc.apply(arch, sd, "# nothing\n", plan_name="my.plan")
    with pytest.raises(r2rc.R2rcError, match=r"^<plan>:1: network `SmallConv` has no layer"):
        r2rc.apply(arch, sd, "widen --layer nope --by 2")


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(layer="conv1"), "exactly one amount"),
    (dict(layer="conv1", by=1.5, to=32), "exactly one amount"),
    (dict(by=1.5), "exactly one target"),
    (dict(layer="conv1", all=True, by=1.5), "exactly one target"),
    (dict(layer="conv1", by=1.5, noise=0.1, noise_approx=0.1), "cannot be used together"),
    (dict(layer="conv1", by=1.5, prove="sometimes"), "use \"full\" or \"local\""),
    (dict(layer="conv1", by=1.5, precision="f8"), "unknown proof precision `f8`"),
    (dict(layer="conv1", by=1.5, inputs=0), "--inputs must be at least 1"),
    (dict(layer="conv1", by=1.5, name="9lives"), "an architecture name is a letter"),
], ids=["no-amount", "two-amounts", "no-target", "two-targets", "two-noises", "prove", "precision", "inputs", "name"])
def test_argument_refusals(kwargs, pattern, small):
    arch, sd = small
    with pytest.raises(r2rc.R2rcError, match=pattern):
        r2rc.widen(arch, sd, **kwargs)


def test_state_dict_refusals_name_the_tensor(small):
    arch, sd = small
    missing = {k: v for k, v in sd.items() if k != "fc1.weight"}
    with pytest.raises(r2rc.R2rcError, match=r"the state dict lacks tensor `fc1.weight` \(expected shape \[150, 4096\]") as e:
        r2rc.widen(arch, missing, layer="conv1", by=1.5)
    assert "another architecture" in e.value.hint
    bad = dict(sd, **{"fc1.bias": np.zeros(3, np.float32)})
    with pytest.raises(r2rc.R2rcError, match=r"tensor `fc1.bias` in the state dict has shape \[3\] but the network expects \[150\]"):
        r2rc.widen(arch, bad, layer="conv1", by=1.5)
    extra = dict(sd, stray=np.zeros(1, np.float32))
    with pytest.raises(r2rc.R2rcError, match=r"the state dict holds tensor `stray`, which has no place in network `SmallConv`"):
        r2rc.widen(arch, extra, layer="conv1", by=1.5)
    nan = dict(sd, **{"fc2.bias": np.full(10, np.nan, np.float32)})
    with pytest.raises(r2rc.R2rcError, match=r"tensor `fc2.bias` in the state dict holds a non-finite value"):
        r2rc.widen(arch, nan, layer="conv1", by=1.5)
    with pytest.raises(r2rc.R2rcError, match="layer `fc1` of network `SmallConv` has no torchvision name"):
        r2rc.widen(arch, sd, layer="conv1", by=1.5, names="torchvision")


def test_a_state_dict_under_another_naming_gets_a_names_hint():
    # torchvision's names passed without names=: the hint says which names= fits.
    arch = r2rc.Arch.load(EXAMPLES / "resnet_cifar10.arch")
    tv = arch.init(seed=2, names="torchvision")
    assert "layer1.0.conv1.weight" in tv
    with pytest.raises(r2rc.R2rcError) as e:
        r2rc.widen(arch, tv, layer="conv2_1", by=1.5)
    assert e.value.hint == 'the state dict names its tensors the torchvision way: pass names="torchvision"'
    # Under names="torchvision" the same dict grows.
    g = r2rc.widen(arch, tv, layer="conv2_1", by=1.5, names="torchvision")
    assert g.state_dict["layer1.0.conv1.weight"].shape[0] > tv["layer1.0.conv1.weight"].shape[0]


def test_wrapper_prefix_is_read_through_with_a_note(small):
    arch, sd = small
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    g = r2rc.widen(arch, wrapped, layer="conv1", by=1.5)
    assert any("module." in n for n in g.report["notes"])
    assert "conv1.weight" in g.state_dict


def test_optimizer_state_refusals(small):
    arch, sd = small
    m = {}
    for k, shape in arch.shapes().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        m[f"{k}.exp_avg"] = np.zeros(shape, np.float32)
        m[f"{k}.exp_avg_sq"] = np.zeros(shape, np.float32)
        m[f"{k}.step"] = np.array(1)
    lacking = {k: v for k, v in m.items() if k != "fc1.bias.exp_avg"}
    with pytest.raises(r2rc.R2rcError, match="the optimizer state lacks `fc1.bias.exp_avg`"):
        r2rc.widen(arch, sd, layer="conv1", by=1.5, optimizer_state=lacking)
    negative = dict(m, **{"fc1.bias.exp_avg_sq": -np.ones(150, np.float32)})
    with pytest.raises(r2rc.R2rcError, match="a second moment is never negative"):
        r2rc.widen(arch, sd, layer="conv1", by=1.5, optimizer_state=negative)


def test_source_errors_are_rendered(tmp_path):
    with pytest.raises(r2rc.R2rcError, match=r"<text>:\d+:\d+"):
        r2rc.Arch.parse("arch Broken\ninput 3x8x8\nconv1: conv 3x3 frobnicate\n")
    with pytest.raises(r2rc.R2rcError, match="nothing.arch"):
        r2rc.Arch.load(tmp_path / "nothing.arch")
    with pytest.raises(r2rc.R2rcError, match="model_type"):
        r2rc.Arch.from_hf({"hidden_size": 8})


def test_wrong_types_raise_type_error(small):
    arch, sd = small
    with pytest.raises(TypeError, match="r2rc.Arch"):
        r2rc.widen(str(SMALL), sd, layer="conv1", by=1.5)
    with pytest.raises(TypeError, match="mapping"):
        r2rc.widen(arch, [1, 2], layer="conv1", by=1.5)
    with pytest.raises(TypeError, match="tensor `fc2.bias`"):
        r2rc.widen(arch, dict(sd, **{"fc2.bias": np.array(["a"] * 10)}), layer="conv1", by=1.5)


def test_failed_proof_carries_the_evidence(small):
    """Weights at the edge of f64's range overflow in the forward pass: teacher and student
    cannot agree, and the proof says where."""
    arch, sd = small
    huge = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in sd.items()}
    huge["fc1.weight"] = huge["fc1.weight"] * 1e300
    with pytest.raises(r2rc.ProofFailed) as e:
        r2rc.widen(arch, huge, layer="conv1", by=1.5)
    assert e.value.exit_code == 1
    assert e.value.evidence and not all(ev["passed"] for ev in e.value.evidence)
    assert str(e.value).startswith("proof failed: the student parts from the teacher at")
