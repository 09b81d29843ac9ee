from typing import Any, Dict, Optional, Tuple

import torch

from . import Arch

Grown = Tuple[torch.nn.Module, Optional[torch.optim.Optimizer], Dict[str, Any]]

def arch_of(model: Any) -> Arch: ...
def widen(model: Any, optimizer: Optional[torch.optim.Optimizer] = ..., *, by: Optional[float] = ..., to: Optional[int] = ..., add: Optional[int] = ..., layer: Optional[str] = ..., stage: Optional[str] = ..., keep_state: bool = ..., **kwargs: Any) -> Grown: ...
def deepen(model: Any, optimizer: Optional[torch.optim.Optimizer] = ..., *, after: str, keep_state: bool = ..., **kwargs: Any) -> Grown: ...
