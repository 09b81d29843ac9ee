"""Grow a Hugging Face causal LM (LlamaForCausalLM and its family, GPT2LMHeadModel) and
its optimizer in one call:

    student, opt2, report = r2rc.hf.widen(model, opt, by=1.5)
    student, opt2, report = r2rc.hf.deepen(model, opt, after="model.layers.5")

The architecture comes from ``model.config`` (``r2rc from-hf``), the weights from its
state_dict under transformers' names; the student is ``type(model)`` built from the
student's config (as ``r2rc widen --names hf`` writes config.json) holding the grown
weights, on the teacher's device and dtype and in its train/eval mode. ``opt2`` is the
optimizer rebuilt over the student's parameters (same class, defaults and groups; an
inserted layer's parameters join their kind's group) with Adam's state mapped by r2rc.
"""

from . import Arch, deepen as _deepen, widen as _widen
from ._optim import flat_state, rebuild

__all__ = ["widen", "deepen", "arch_of"]

_DTYPES = {"torch.float32": "f32", "torch.float64": "f64", "torch.float16": "f16", "torch.bfloat16": "bf16"}


def arch_of(model):
    """The r2rc architecture of a transformers model (from its config)."""
    return Arch.from_hf(model.config.to_dict())


def _untied(model):
    """The state dict without tied copies (GPT-2's ``lm_head.weight`` is ``wte``'s
    tensor): r2rc's layout holds each tensor once. Returns it and the names dropped."""
    sd = model.state_dict(keep_vars=True)
    seen, out, tied = set(), {}, []
    for k, v in sd.items():
        if id(v) in seen:
            tied.append(k)
            continue
        seen.add(id(v))
        out[k] = v.detach()
    return out, tied


def _grow(step, model, optimizer, keep_state, kwargs):
    config = model.config.to_dict()
    arch = Arch.from_hf(config)
    flat = flat_state(model, optimizer) if (optimizer is not None and keep_state) else None
    state, tied = _untied(model)
    g = step(arch, state, names="hf", optimizer_state=flat, **kwargs)
    p = next(model.parameters())
    cfg = g.arch.hf_config(base=config, dtype=_DTYPES.get(str(p.dtype)))
    student_config = type(model.config).from_dict(cfg)
    student = type(model)(student_config)
    missing, unexpected = student.load_state_dict(g.state_dict, strict=False)
    if unexpected or set(missing) - set(tied):
        raise RuntimeError(f"the student's weights do not fit {type(model).__name__}: "
                           f"missing {sorted(set(missing) - set(tied))}, unexpected {sorted(unexpected)}")
    student.tie_weights()
    student.to(device=p.device, dtype=p.dtype)
    student.train(model.training)
    opt2 = None if optimizer is None else rebuild(optimizer, model, student, g.optimizer_state)
    return student, opt2, g.report


def widen(model, optimizer=None, *, by=None, to=None, add=None, layer=None, stage=None,
          keep_state=True, **kwargs):
    """Widen ``model`` (every space when neither ``layer`` nor ``stage`` is given: the
    residual stream, MLP features and heads) by ``by``, ``to`` or ``add``; other keywords
    as :func:`r2rc.widen`. Returns (student, optimizer, report)."""
    everything = layer is None and stage is None
    args = dict(by=by, to=to, add=add, layer=layer, stage=stage, all=everything, **kwargs)
    return _grow(_widen, model, optimizer, keep_state, args)


def deepen(model, optimizer=None, *, after, keep_state=True, **kwargs):
    """Insert a layer after ``after`` (``model.layers.5``, or r2rc's ``layers_6``); other
    keywords as :func:`r2rc.deepen`. Returns (student, optimizer, report)."""
    return _grow(_deepen, model, optimizer, keep_state, dict(after=after, **kwargs))
