"""State dicts of torch tensors or numpy arrays <-> the numpy arrays the native module
reads. CPU torch tensors are viewed as numpy without a copy (``Tensor.numpy()``), and so
are the arrays that come back (``torch.from_numpy``); a GPU tensor is copied to the CPU,
a float16/bfloat16 one is widened to float32 (numpy has no bfloat16). r2rc itself computes
in float64, so reading is one conversion into its values."""

import sys

import numpy as np

_NP = {np.dtype("float32"): "f32", np.dtype("float64"): "f64", np.dtype("float16"): "f16"}


def _torch():
    return sys.modules.get("torch")


def _torch_dtype_name(t, torch):
    return {
        torch.float32: "f32",
        torch.float64: "f64",
        torch.float16: "f16",
        torch.bfloat16: "bf16",
    }.get(t.dtype)


class Kind:
    """How a state dict came in (torch or numpy, and each float dtype), so it goes back
    out the same way."""

    def __init__(self, torch_in, dtype):
        self.torch = torch_in
        self.dtype = dtype  # r2rc's name: f32, f64, f16, bf16

    def out(self, arrays):
        """The native module's arrays as the caller's kind."""
        torch = _torch() if self.torch else None
        out = {}
        for k, a in arrays.items():
            if torch is not None:
                t = torch.from_numpy(a)
                if self.dtype == "f16" and t.is_floating_point():
                    t = t.to(torch.float16)
                elif self.dtype == "bf16" and t.is_floating_point():
                    t = t.to(torch.bfloat16)
                out[k] = t
            else:
                if self.dtype == "f16" and a.dtype.kind == "f":
                    a = a.astype(np.float16)
                out[k] = a
        return out


def to_numpy(state, what="state dict"):
    """``state`` (name -> torch tensor, numpy array, or number) as numpy arrays the native
    module reads, with its Kind: the dtype is the most common float dtype (by elements), as
    r2rc reads a file's."""
    if not hasattr(state, "items"):
        raise TypeError(f"the {what} must be a mapping of tensor names to tensors, not {type(state).__name__}")
    torch = _torch()
    arrays, counts, torch_in = {}, {}, False
    for k, v in state.items():
        name = None
        if torch is not None and isinstance(v, torch.Tensor):
            torch_in = True
            t = v.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            name = _torch_dtype_name(t, torch)
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()
            elif t.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
                t = t.long()
            a = t.numpy()
        else:
            a = np.asarray(v)
            name = _NP.get(a.dtype)
            if a.dtype == np.float16:
                a = a.astype(np.float32)
            elif a.dtype.kind in "iub":
                a = a.astype(np.int64)
        if name is not None:
            counts[name] = counts.get(name, 0) + a.size
        arrays[str(k)] = a
    dtype = max(counts, key=counts.get) if counts else "f32"
    return arrays, Kind(torch_in, dtype)
