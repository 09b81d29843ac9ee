"""r2rc's exceptions: the CLI's message and hint, and a failed proof's evidence."""

import json

__all__ = ["R2rcError", "ProofFailed"]


class R2rcError(ValueError):
    """Bad input or a refused rewrite, with the CLI's message (``message``) and hint
    (``hint``, or None); ``exit_code`` is what the CLI would exit with (2)."""

    def __init__(self, message, hint=None, evidence="[]", exit_code=2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.evidence = json.loads(evidence) if isinstance(evidence, str) else list(evidence)
        self.exit_code = exit_code

    def __str__(self):
        if self.hint:
            return f"{self.message}\n  help: {self.hint}"
        return self.message


class ProofFailed(R2rcError):
    """The student is not the teacher's function: ``evidence`` lists the proof's runs
    (report.json's evidence fields: mode, dtype, max_abs_err, max_rel_err, tolerance,
    passed, worst, first_divergence, ...); ``exit_code`` is 1, as the CLI's."""
