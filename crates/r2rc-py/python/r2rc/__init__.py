"""r2rc in Python: grow a trained network inside a training script, with the CLI's proofs.

    import r2rc
    arch = r2rc.Arch.load("examples/resnet_cifar10.arch")
    g = r2rc.widen(arch, model.state_dict(), layer="conv2_x", by=1.5)
    g.arch, g.state_dict, g.optimizer_state, g.report

Every step takes a state dict of torch tensors or numpy arrays under ``names`` (r2rc,
torchvision, hf or timm) and gives the student's back as the same kind. The work is the
Rust library's (``r2rc::api``, the CLI's own path): for the same arguments and seed the
student equals ``r2rc widen ... -o DIR``'s bit for bit. A failed proof raises
:class:`ProofFailed` with the evidence; bad input raises :class:`R2rcError` with the CLI's
message. ``r2rc.torch`` and ``r2rc.hf`` grow a live module and its optimizer.
"""

import json
from typing import Any, Dict, Mapping, NamedTuple, Optional

from . import _r2rc
from ._convert import to_numpy
from .errors import ProofFailed, R2rcError

__version__ = _r2rc.__version__
__all__ = [
    "Arch",
    "Grown",
    "widen",
    "deepen",
    "morph",
    "apply",
    "R2rcError",
    "ProofFailed",
]


class Arch:
    """A compiled architecture. Make one with :meth:`parse`, :meth:`load` or
    :meth:`from_hf`; ``str(arch)`` is its canonical text."""

    __slots__ = ("_a",)

    def __init__(self, native):
        self._a = native

    @staticmethod
    def parse(text: str, sets: Optional[Mapping[str, Any]] = None, name: Optional[str] = None) -> "Arch":
        """Compiles architecture text; ``sets`` overrides its parameters
        (``{"r": "3/16"}``, as ``--set r=3/16``), ``name`` renames it."""
        return Arch(_r2rc.Arch.parse(text, _sets(sets), name))

    @staticmethod
    def load(path, sets: Optional[Mapping[str, Any]] = None, name: Optional[str] = None) -> "Arch":
        """Reads and compiles an ``.arch`` file."""
        return Arch(_r2rc.Arch.load(str(path), _sets(sets), name))

    @staticmethod
    def from_hf(config, name: Optional[str] = None) -> "Arch":
        """The architecture of a Hugging Face config (``r2rc from-hf``): a dict, a
        ``transformers`` config object, or the path of a config.json."""
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if isinstance(config, dict):
            text = json.dumps(config)
        else:
            with open(config, encoding="utf-8") as f:
                text = f.read()
        return Arch(_r2rc.Arch.from_hf_json(text, name))

    @property
    def name(self) -> str:
        return self._a.name

    @property
    def text(self) -> str:
        return self._a.text

    def check(self) -> Dict[str, Any]:
        """``r2rc check --json``: name, input and output shapes, per-layer rows
        (params, MACs, shapes) and totals."""
        return json.loads(self._a.check_json())

    def table(self) -> str:
        """``r2rc check``'s table as text."""
        return self._a.table()

    def shapes(self, names: str = "r2rc"):
        """The state dict's tensor names and shapes under ``names``."""
        return dict(self._a.shapes(names))

    def init(self, seed: int = 0, names: str = "r2rc", dtype: str = "f32", torch: bool = False):
        """A random teacher as the CLI draws one without ``--weights`` (seeded, random
        biases and BN statistics): numpy arrays, or torch tensors with ``torch=True``."""
        arrays = self._a.init(seed, names, dtype)
        if torch:
            import torch as _t

            return {k: _t.from_numpy(v) for k, v in arrays.items()}
        return arrays

    def torch_source(self, names: str = "r2rc") -> str:
        """A standalone ``torch.nn.Module``'s source (``r2rc export --torch``)."""
        return self._a.torch_source(names)

    def hf_config(self, base=None, dtype: Optional[str] = None) -> Dict[str, Any]:
        """The Hugging Face config of this architecture (as ``--names hf`` writes
        config.json), starting from ``base`` (the teacher's config: dict or object)."""
        if base is not None and hasattr(base, "to_dict"):
            base = base.to_dict()
        text = None if base is None else json.dumps(base)
        return json.loads(self._a.hf_config_json(text, dtype))

    def __str__(self):
        return self._a.text

    def __repr__(self):
        return repr(self._a)

    def __eq__(self, other):
        return isinstance(other, Arch) and self._a == other._a

    def __hash__(self):
        return hash(self._a.text)


class Grown(NamedTuple):
    """A step's student: its architecture, state dict (the teacher's kind and names),
    optimizer state (when the teacher's was given, else None) and report (report.json's
    fields)."""

    arch: Arch
    state_dict: Dict[str, Any]
    optimizer_state: Optional[Dict[str, Any]]
    report: Dict[str, Any]


def _sets(sets):
    return None if sets is None else {str(k): str(v) for k, v in sets.items()}


def _arch(arch) -> Arch:
    if isinstance(arch, Arch):
        return arch
    raise TypeError(f"arch must be an r2rc.Arch (Arch.load, Arch.parse, Arch.from_hf), not {type(arch).__name__}")


def _grow(kind, arch, state_dict, args, names, prove, optimizer_state, seed, precision, inputs, name):
    arch = _arch(arch)
    arrays, kind_in = to_numpy(state_dict)
    opt, opt_kind = (None, None)
    if optimizer_state is not None:
        opt, opt_kind = to_numpy(optimizer_state, "optimizer state")
    native, state, moments, report = _r2rc.grow(
        kind,
        arch._a,
        arrays,
        kind_in.dtype,
        args,
        names=names,
        prove=prove,
        optimizer_state=opt,
        optimizer_dtype=None if opt_kind is None else opt_kind.dtype,
        seed=seed,
        precision=precision,
        inputs=inputs,
        name=name,
    )
    return Grown(
        Arch(native),
        kind_in.out(state),
        None if moments is None else opt_kind.out(moments),
        json.loads(report),
    )


def widen(
    arch: Arch,
    state_dict: Mapping[str, Any],
    *,
    layer: Optional[str] = None,
    stage: Optional[str] = None,
    all: bool = False,
    by: Optional[float] = None,
    to: Optional[int] = None,
    add: Optional[int] = None,
    method: str = "r2r",
    init: str = "match",
    noise: Optional[float] = None,
    noise_approx: Optional[float] = None,
    names: str = "r2rc",
    prove: Optional[str] = "full",
    optimizer_state: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    precision: str = "f64",
    inputs: int = 2,
    name: Optional[str] = None,
) -> Grown:
    """``r2rc widen``: widen a layer, block, stage (``stage=``) or everything (``all=True``)
    by a factor (``by``), to a width (``to``) or by channels (``add``) with ``method`` (r2r,
    netmorph, net2net, random). ``prove`` is "full", "local" or None (``--no-prove``);
    ``precision`` the proof's (``--dtype``). ``optimizer_state`` is Adam's, flat as the
    CLI's optimizer file: ``<param>.exp_avg``, ``<param>.exp_avg_sq``, ``<param>.step``."""
    args = dict(layer=layer, stage=stage, all=all, by=by, to=to, add=add, method=method,
                init=init, noise=noise, noise_approx=noise_approx)
    return _grow("widen", arch, state_dict, args, names, prove, optimizer_state, seed, precision, inputs, name)


def deepen(
    arch: Arch,
    state_dict: Mapping[str, Any],
    *,
    after: str,
    method: str = "r2r",
    width: Optional[int] = None,
    names: str = "r2rc",
    prove: Optional[str] = "full",
    optimizer_state: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    precision: str = "f64",
    inputs: int = 2,
    name: Optional[str] = None,
) -> Grown:
    """``r2rc deepen``: insert layers after a block or row (``after``; the weights' module
    names too, ``layer3.1``, ``model.layers.5``) with ``method`` (r2r, net2net, netmorph,
    netmorph-dense, copy, random). Other keywords as :func:`widen`."""
    args = dict(after=after, method=method, width=width)
    return _grow("deepen", arch, state_dict, args, names, prove, optimizer_state, seed, precision, inputs, name)


def morph(
    arch: Arch,
    state_dict: Mapping[str, Any],
    *,
    layer: str,
    kernel: int,
    names: str = "r2rc",
    prove: Optional[str] = "full",
    optimizer_state: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    precision: str = "f64",
    inputs: int = 2,
    name: Optional[str] = None,
) -> Grown:
    """``r2rc morph``: grow convolution ``layer``'s kernel to ``kernel`` (zero padding)."""
    args = dict(layer=layer, kernel=kernel)
    return _grow("morph", arch, state_dict, args, names, prove, optimizer_state, seed, precision, inputs, name)


def apply(
    arch: Arch,
    state_dict: Mapping[str, Any],
    plan: str,
    *,
    plan_name: str = "<plan>",
    names: str = "r2rc",
    prove: Optional[str] = "full",
    optimizer_state: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    precision: str = "f64",
    inputs: int = 2,
    name: Optional[str] = None,
) -> Grown:
    """``r2rc apply``: a plan's text (one transform per line with the commands' words,
    ``widen --layer conv2_1 --by 1.5``); step i draws with ``seed + i``. ``plan_name``
    names it in errors and the report. ``prove`` is "full" or None."""
    args = dict(plan=plan, plan_name=plan_name)
    return _grow("apply", arch, state_dict, args, names, prove, optimizer_state, seed, precision, inputs, name)
