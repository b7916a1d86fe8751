"""Errors raised by ``netweave.kernel``: typed, so callers can test for each case."""

from __future__ import annotations

import os


class KernelError(OSError):
    """A libbpf or bpf(2) call failed; ``errno`` holds the kernel's error number."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err) if err < 4000 else 'libbpf error'}")
        self.what = what


class ObjectError(Exception):
    """A kernel object is missing, damaged or does not match its recorded digest."""


class VerifierError(KernelError):
    """The verifier rejected a program; ``log`` is the tail of the verifier's own log."""

    def __init__(self, err: int, program: str, log: str) -> None:
        self.program = program
        self.log = log
        reason = log.strip().splitlines()[-1] if log.strip() else "no verifier log"
        super().__init__(err, f"verifier rejected program {program!r}: {reason}")
        self.args = (err, f"verifier rejected program {program!r}:\n{log}")

    def __str__(self) -> str:
        return f"verifier rejected program {self.program!r}:\n{self.log}"


class AttachError(KernelError):
    """A program could not be attached to its hook."""


class AuditRefused(Exception):  # noqa: N818 - the name the design documents use
    """The pre-load audit refused a program: it calls a helper or kfunc not allowed for it."""

    def __init__(self, program: str, index: int, call: str, reason: str) -> None:
        self.program = program
        self.index = index
        self.call = call
        super().__init__(
            f"refused to load program {program!r}: instruction {index} calls {call} ({reason})"
        )
