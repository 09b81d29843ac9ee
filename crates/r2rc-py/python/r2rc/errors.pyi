from typing import Any, Dict, List, Optional

class R2rcError(ValueError):
    message: str
    hint: Optional[str]
    evidence: List[Dict[str, Any]]
    exit_code: int
    def __init__(self, message: str, hint: Optional[str] = ..., evidence: Any = ..., exit_code: int = ...) -> None: ...

class ProofFailed(R2rcError): ...
