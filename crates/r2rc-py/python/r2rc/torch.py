"""Grow a live PyTorch module and its optimizer in one call:

    student, opt2, report = r2rc.torch.widen(model, opt, arch="net.arch", layer="conv2_x", by=1.5)

``model`` is a module of ``r2rc export --torch`` (or one grown here: it remembers its
architecture) or a torchvision ResNet (``names="torchvision"`` is the default then, with
the matching ``examples/resnet*.arch``). The student is the student architecture's
exported module (``Arch.torch_source``) holding the grown weights, on the teacher's device
and dtype, in the teacher's train/eval mode, with ``student.r2rc_arch`` set; ``opt2`` is
the optimizer rebuilt over its parameters with Adam's state mapped by r2rc (None when no
optimizer was given).
"""

import os

import torch as _torch

from . import Arch, deepen as _deepen, morph as _morph, widen as _widen
from ._optim import flat_state, rebuild

__all__ = ["widen", "deepen", "morph", "module", "arch_of"]


def arch_of(model, arch=None):
    """The architecture of ``model``: ``arch`` (an Arch, a path, or text), else the one a
    grown module remembers."""
    if arch is None:
        arch = getattr(model, "r2rc_arch", None)
        if arch is None:
            raise ValueError(
                f"{type(model).__name__} does not say its architecture: pass arch= (an r2rc.Arch "
                "or the .arch file it was exported from, e.g. examples/resnet18.arch for torchvision's resnet18)"
            )
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, (str, os.PathLike)) and ("\n" not in str(arch)) and os.path.exists(arch):
        return Arch.load(arch)
    return Arch.parse(str(arch))


def _default_names(model):
    try:
        import torchvision

        if isinstance(model, torchvision.models.ResNet):
            return "torchvision"
    except ImportError:
        pass
    return "r2rc"


def module(arch, names="r2rc"):
    """A fresh instance of ``arch``'s exported PyTorch module (``r2rc export --torch``),
    its state_dict named under ``names``."""
    ns = {"__name__": f"r2rc_{arch.name}"}
    exec(compile(arch.torch_source(names), f"<r2rc export {arch.name}>", "exec"), ns)
    cls = ns.get(arch.name)
    if not (isinstance(cls, type) and issubclass(cls, _torch.nn.Module)):
        mods = [v for v in ns.values() if isinstance(v, type) and issubclass(v, _torch.nn.Module) and v.__module__ == ns["__name__"]]
        cls = mods[-1]
    m = cls()
    m.r2rc_arch = arch
    return m


def _grow(step, model, optimizer, arch, names, keep_state, kwargs):
    arch = arch_of(model, arch)
    names = names or _default_names(model)
    flat = flat_state(model, optimizer) if (optimizer is not None and keep_state) else None
    g = step(arch, model.state_dict(), names=names, optimizer_state=flat, **kwargs)
    student = module(g.arch, names)
    student.load_state_dict(g.state_dict)
    p = next(model.parameters(), None)
    if p is not None:
        student.to(device=p.device, dtype=p.dtype)
    student.train(model.training)
    opt2 = None if optimizer is None else rebuild(optimizer, model, student, g.optimizer_state)
    return student, opt2, g.report


def widen(model, optimizer=None, *, arch=None, names=None, keep_state=True, **kwargs):
    """:func:`r2rc.widen` on a live module; returns (student, optimizer, report)."""
    return _grow(_widen, model, optimizer, arch, names, keep_state, kwargs)


def deepen(model, optimizer=None, *, arch=None, names=None, keep_state=True, **kwargs):
    """:func:`r2rc.deepen` on a live module; returns (student, optimizer, report)."""
    return _grow(_deepen, model, optimizer, arch, names, keep_state, kwargs)


def morph(model, optimizer=None, *, arch=None, names=None, keep_state=True, **kwargs):
    """:func:`r2rc.morph` on a live module; returns (student, optimizer, report)."""
    return _grow(_morph, model, optimizer, arch, names, keep_state, kwargs)
