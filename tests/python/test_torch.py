"""r2rc.torch: a live module and its optimizer grown in one call, for an r2rc-exported
module and torchvision ResNets: the student computes the teacher's function, Adam's state
follows the weights, and training continues with the returned optimizer."""

import pytest
import torch
import torchvision

import r2rc
import r2rc.torch
from conftest import EXAMPLES


def trained(model, opt, x, steps=2):
    """A few Adam steps so that the optimizer has state."""
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()


def assert_close(a, b, rel=1e-5):
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale, (a - b).abs().max().item() / scale


def test_exported_module_widen_deepen_morph():
    torch.manual_seed(0)
    arch = r2rc.Arch.load(EXAMPLES / "smallconv.arch")
    model = r2rc.torch.module(arch)
    model.load_state_dict(r2rc.Arch.load(EXAMPLES / "smallconv.arch").init(seed=2, torch=True))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
    x = torch.randn(4, 3, 32, 32)
    trained(model, opt, x)
    with torch.no_grad():
        want = model(x)
    s, opt2, report = r2rc.torch.widen(model, opt, layer="conv1", by=1.5)
    assert report["proved"] and s.r2rc_arch.name == "SmallConv"
    with torch.no_grad():
        assert_close(want, s(x))
    # Groups rebuilt by name, hyperparameters kept; fc2's moments untouched by widening conv1.
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.1, 0.0]
    assert {id(p) for p in opt2.param_groups[0]["params"]} == {id(p) for n, p in s.named_parameters() if n.endswith("weight")}
    old = opt.state[model.fc2.weight]
    new = opt2.state[s.fc2.weight]
    assert torch.equal(old["exp_avg"], new["exp_avg"]) and float(new["step"]) == float(old["step"])
    trained(s, opt2, x, steps=1)
    # The grown module remembers its architecture: no arch= needed to grow it again.
    d, opt3, report = r2rc.torch.deepen(s, opt2, after="conv1")
    with torch.no_grad():
        assert_close(s(x), d(x))
    m, opt4, report = r2rc.torch.morph(d, opt3, layer="conv1", kernel=9)
    with torch.no_grad():
        assert_close(d(x), m(x))
    trained(m, opt4, x, steps=1)


@pytest.mark.parametrize("step,kwargs", [
    (r2rc.torch.widen, dict(layer="layer2", by=1.5)),
    (r2rc.torch.deepen, dict(after="layer3.1")),
], ids=["widen", "deepen"])
def test_torchvision_resnet18(step, kwargs):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 224, 224)
    trained(model, opt, x, steps=1)
    with torch.no_grad():
        want = model(x)
    s, opt2, report = step(model, opt, arch=EXAMPLES / "resnet18.arch", prove="local", **kwargs)
    assert report["proved"]
    assert "layer1.0.conv1.weight" in s.state_dict()
    with torch.no_grad():
        assert_close(want, s(x), rel=1e-4)
    trained(s, opt2, x, steps=1)


def test_torchvision_needs_its_arch():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="pass arch="):
        r2rc.torch.widen(model, layer="layer2", by=1.5)


def test_sgd_momentum_follows_the_weights_or_is_reset():
    torch.manual_seed(1)
    arch = r2rc.Arch.load(EXAMPLES / "smallconv.arch")
    model = r2rc.torch.module(arch)
    model.load_state_dict(arch.init(seed=3, torch=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 32, 32)
    trained(model, opt, x, steps=2)
    teacher_buf = {n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()}
    s, opt2, _ = r2rc.torch.widen(model, opt, layer="conv1", by=1.5)
    assert isinstance(opt2, torch.optim.SGD) and opt2.param_groups[0]["momentum"] == 0.9
    named = dict(s.named_parameters())
    # R2R keeps every teacher entry, so its momentum is the teacher's on the old entries,
    # and new entries start at zero.
    w = "conv1.weight"
    old = teacher_buf[w].shape[0]
    got = opt2.state[named[w]]["momentum_buffer"]
    assert torch.equal(got[:old], teacher_buf[w])
    assert got[old:].abs().max().item() == 0.0
    assert got[old:].shape[0] > 0
    for n, p in named.items():
        assert opt2.state[p]["momentum_buffer"].shape == p.shape, n
    before = named[w].detach().clone()
    opt2.zero_grad()
    s.train()
    s(x).square().mean().backward()
    opt2.step()
    assert not torch.equal(before, named[w].detach())
    s2, opt3, _ = r2rc.torch.widen(model, opt, layer="conv1", by=1.5, keep_state=False)
    assert isinstance(opt3, torch.optim.SGD) and not opt3.state
    assert opt3.param_groups[0]["momentum"] == 0.9


def test_other_optimizer_state_is_refused():
    arch = r2rc.Arch.load(EXAMPLES / "smallconv.arch")
    model = r2rc.torch.module(arch)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    trained(model, opt, torch.randn(2, 3, 32, 32), steps=1)
    with pytest.raises(ValueError, match="sum"):
        r2rc.torch.widen(model, opt, layer="conv1", by=1.5)
