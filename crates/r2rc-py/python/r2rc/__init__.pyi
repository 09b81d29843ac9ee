from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union
import os

from .errors import ProofFailed as ProofFailed, R2rcError as R2rcError

__version__: str

StateDict = Mapping[str, Any]  # torch tensors or numpy arrays

class Arch:
    @staticmethod
    def parse(text: str, sets: Optional[Mapping[str, Any]] = ..., name: Optional[str] = ...) -> Arch: ...
    @staticmethod
    def load(path: Union[str, os.PathLike], sets: Optional[Mapping[str, Any]] = ..., name: Optional[str] = ...) -> Arch: ...
    @staticmethod
    def from_hf(config: Union[Dict[str, Any], Any, str, os.PathLike], name: Optional[str] = ...) -> Arch: ...
    @property
    def name(self) -> str: ...
    @property
    def text(self) -> str: ...
    def check(self) -> Dict[str, Any]: ...
    def table(self) -> str: ...
    def shapes(self, names: str = ...) -> Dict[str, List[int]]: ...
    def init(self, seed: int = ..., names: str = ..., dtype: str = ..., torch: bool = ...) -> Dict[str, Any]: ...
    def torch_source(self, names: str = ...) -> str: ...
    def hf_config(self, base: Any = ..., dtype: Optional[str] = ...) -> Dict[str, Any]: ...

class Grown(NamedTuple):
    arch: Arch
    state_dict: Dict[str, Any]
    optimizer_state: Optional[Dict[str, Any]]
    report: Dict[str, Any]

def widen(
    arch: Arch,
    state_dict: StateDict,
    *,
    layer: Optional[str] = ...,
    stage: Optional[str] = ...,
    all: bool = ...,
    by: Optional[float] = ...,
    to: Optional[int] = ...,
    add: Optional[int] = ...,
    method: str = ...,
    init: str = ...,
    noise: Optional[float] = ...,
    noise_approx: Optional[float] = ...,
    names: str = ...,
    prove: Optional[str] = ...,
    optimizer_state: Optional[StateDict] = ...,
    seed: int = ...,
    precision: str = ...,
    inputs: int = ...,
    name: Optional[str] = ...,
) -> Grown: ...
def deepen(
    arch: Arch,
    state_dict: StateDict,
    *,
    after: str,
    method: str = ...,
    width: Optional[int] = ...,
    names: str = ...,
    prove: Optional[str] = ...,
    optimizer_state: Optional[StateDict] = ...,
    seed: int = ...,
    precision: str = ...,
    inputs: int = ...,
    name: Optional[str] = ...,
) -> Grown: ...
def morph(
    arch: Arch,
    state_dict: StateDict,
    *,
    layer: str,
    kernel: int,
    names: str = ...,
    prove: Optional[str] = ...,
    optimizer_state: Optional[StateDict] = ...,
    seed: int = ...,
    precision: str = ...,
    inputs: int = ...,
    name: Optional[str] = ...,
) -> Grown: ...
def apply(
    arch: Arch,
    state_dict: StateDict,
    plan: str,
    *,
    plan_name: str = ...,
    names: str = ...,
    prove: Optional[str] = ...,
    optimizer_state: Optional[StateDict] = ...,
    seed: int = ...,
    precision: str = ...,
    inputs: int = ...,
    name: Optional[str] = ...,
) -> Grown: ...
