"""An optimizer over a teacher's parameters <-> the flat Adam state r2rc maps
(``<param>.exp_avg``, ``<param>.exp_avg_sq``, ``<param>.step``, as the CLI's optimizer
file holds them), and the student's optimizer rebuilt from it: the same class and
hyperparameters, each student parameter in its teacher parameter's group."""

import re

import torch


def _named(model, optimizer):
    """(group index, name, parameter) for every parameter the optimizer holds."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    out = []
    for gi, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError("the optimizer holds a parameter the model does not name")
            out.append((gi, by_id[id(p)], p))
    return out


def flat_state(model, optimizer):
    """Adam's (or AdamW's) state as r2rc reads it, or None when the optimizer has no
    state yet. SGD's ``momentum_buffer`` travels as ``exp_avg``: like Adam's first moment
    it is a running sum of gradients, so an entry copied with scale c gets c times it."""
    if not optimizer.state:
        return None
    out = {}
    for gi, name, p in _named(model, optimizer):
        s = optimizer.state.get(p, {})
        if optimizer.param_groups[gi].get("amsgrad"):
            raise ValueError("amsgrad keeps max_exp_avg_sq, which r2rc has no mapping for")
        if "momentum_buffer" in s and set(s) == {"momentum_buffer"}:
            # r2rc maps the first moment; the second (zeros here) is dropped again in rebuild.
            s = {"exp_avg": s["momentum_buffer"]}
        unknown = set(s) - {"exp_avg", "exp_avg_sq", "step"}
        if unknown:
            raise ValueError(
                f"the optimizer's state of `{name}` holds {sorted(unknown)}: r2rc maps Adam's "
                "state (exp_avg, exp_avg_sq, step) and SGD's momentum_buffer only; pass "
                "keep_state=False to start the "
                "student's optimizer afresh with the same hyperparameters"
            )
        zeros = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
        out[f"{name}.exp_avg"] = s.get("exp_avg", zeros).detach().contiguous()
        out[f"{name}.exp_avg_sq"] = s.get("exp_avg_sq", zeros).detach().contiguous()
        step = s.get("step", 0)
        step = float(step.item() if torch.is_tensor(step) else step)
        out[f"{name}.step"] = torch.tensor(int(round(step)), dtype=torch.int64)
    return out


def _pattern(name):
    """A parameter's name with its indices blanked: an inserted layer's parameters
    (`model.layers.6.mlp.up_proj.weight`) join the group of their kind."""
    return re.sub(r"\d+", "#", name)


def rebuild(optimizer, teacher, student, state):
    """The student's optimizer: ``optimizer``'s class and defaults, its groups'
    hyperparameters, every student parameter in the group of the teacher parameter of the
    same name (or kind, or the first group), and ``state`` (the student's flat Adam state,
    or None) as its per-parameter state."""
    groups = {}
    kinds = {}
    for gi, name, _ in _named(teacher, optimizer):
        groups[name] = gi
        kinds.setdefault(_pattern(name), gi)
    new = [[] for _ in optimizer.param_groups]
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        gi = groups.get(name, kinds.get(_pattern(name), 0))
        new[gi].append((name, p))
    param_groups = []
    for gi, group in enumerate(optimizer.param_groups):
        if not new[gi]:
            continue
        hyper = {k: v for k, v in group.items() if k != "params"}
        param_groups.append(dict(hyper, params=[p for _, p in new[gi]]))
    opt = type(optimizer)(param_groups, **optimizer.defaults)
    if state is not None:
        for members in new:
            for name, p in members:
                key = f"{name}.exp_avg"
                if key not in state:
                    continue
                if isinstance(opt, torch.optim.SGD):
                    buf = torch.as_tensor(state[key]).to(p.device, p.dtype).clone()
                    opt.state[p] = {"momentum_buffer": buf}
                    continue
                step = state[f"{name}.step"]
                step = float(step.item() if torch.is_tensor(step) else step)
                opt.state[p] = {
                    "step": torch.tensor(step),
                    "exp_avg": torch.as_tensor(state[key]).to(p.device, p.dtype).clone(),
                    "exp_avg_sq": torch.as_tensor(state[f"{name}.exp_avg_sq"]).to(p.device, p.dtype).clone(),
                }
    return opt
