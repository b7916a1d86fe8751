"""The append-only, hash-chained audit log of every kernel change netweave makes."""

from netweave.audit.log import AuditEntry, AuditLog, VerifyResult, default_log, set_default_log

__all__ = ["AuditEntry", "AuditLog", "VerifyResult", "default_log", "set_default_log"]
