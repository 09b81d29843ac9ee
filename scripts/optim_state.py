"""Adam/AdamW optimizer state <-> r2rc's optimizer-state file (CLI.md "Additions").

The file is safetensors with, for every trainable parameter NAME (as
`model.named_parameters()` names it: the r2rc module of `r2rc export --torch`, or a
Hugging Face model), `NAME.exp_avg` and `NAME.exp_avg_sq` (the parameter's shape) and
`NAME.step` (an int64 scalar). `r2rc widen|deepen|morph|apply --optimizer-state FILE`
maps it onto the student's parameters.

    from optim_state import save_state, load_state
    save_state(model, optimizer, "adam.safetensors")     # teacher: after training
    # r2rc widen NET.arch --weights W --optimizer-state adam.safetensors -o out
    opt = torch.optim.AdamW(student.parameters(), lr=...)
    load_state(student, opt, "out/NET.optimizer.safetensors")

Command line: `python3 optim_state.py show FILE` lists the tensors.
"""

import sys

import torch
from safetensors.torch import load_file, save_file

__all__ = ["to_tensors", "save_state", "load_state"]


def _names(model, optimizer):
    """The optimizer's parameters in state_dict order (its integer keys), with names."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise ValueError("amsgrad keeps max_exp_avg_sq, which the file has no place for")
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError("the optimizer holds a parameter the model does not name")
            out.append((by_id[id(p)], p))
    return out


def to_tensors(model, optimizer):
    """The file's tensors for `optimizer` (Adam or AdamW) over `model`'s parameters; a
    parameter without state yet gets zero moments and step 0."""
    state = optimizer.state_dict()["state"]
    names = _names(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = trainable - {n for n, _ in names}
    if missing:
        raise ValueError(f"the optimizer does not hold {sorted(missing)[:3]}")
    out = {}
    for i, (name, p) in enumerate(names):
        s = state.get(i, {})
        zeros = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
        out[f"{name}.exp_avg"] = s.get("exp_avg", zeros).detach().contiguous().cpu()
        out[f"{name}.exp_avg_sq"] = s.get("exp_avg_sq", zeros).detach().contiguous().cpu()
        step = s.get("step", 0)
        step = float(step.item() if torch.is_tensor(step) else step)
        out[f"{name}.step"] = torch.tensor(int(round(step)), dtype=torch.int64)
    return out


def save_state(model, optimizer, path):
    """Writes `optimizer`'s state over `model` to `path`."""
    save_file(to_tensors(model, optimizer), path)


def load_state(model, optimizer, path):
    """Loads `path` into `optimizer` (built over `model`'s parameters, Adam or AdamW): every
    parameter's moments by name, in the parameter's dtype and device; step as a float
    tensor, as torch keeps it. Refuses missing, misshapen or unknown tensors."""
    tensors = load_file(path)
    names = _names(model, optimizer)
    known = set()
    state = {}
    for i, (name, p) in enumerate(names):
        entry = {}
        for key in ("exp_avg", "exp_avg_sq", "step"):
            full = f"{name}.{key}"
            if full not in tensors:
                raise ValueError(f"{path} lacks `{full}`")
            known.add(full)
            t = tensors[full]
            if key == "step":
                if t.numel() != 1:
                    raise ValueError(f"`{full}` in {path} is not a scalar")
                entry[key] = torch.tensor(float(t.item()), dtype=torch.float32)
            else:
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"`{full}` in {path} has shape {tuple(t.shape)}, "
                                     f"the parameter {tuple(p.shape)}")
                entry[key] = t.to(dtype=p.dtype, device=p.device)
        state[i] = entry
    extra = sorted(set(tensors) - known)
    if extra:
        raise ValueError(f"{path} holds `{extra[0]}`, which names no parameter of the model")
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def main(argv):
    if len(argv) == 3 and argv[1] == "show":
        for k, v in load_file(argv[2]).items():
            print(f"{k}\t{v.dtype}\t{tuple(v.shape)}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
