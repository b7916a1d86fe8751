"""Service identification with nmap's service probes: parser, matcher, passive, active."""

from netweave.services.inventory import ServiceInventory
from netweave.services.matcher import Matcher, PatternFailure
from netweave.services.passive import PassiveIdentifier, identify_passive
from netweave.services.probes_file import (
    DEFAULT_PROBES_PATH,
    ProbeDatabase,
    ProbesFileError,
    load_probes,
)
from netweave.services.records import MatchRule, ParseIssue, Probe, ServiceMatch
from netweave.services.service_record import ServiceRecord, record_from_match

__all__ = [
    "DEFAULT_PROBES_PATH",
    "MatchRule",
    "Matcher",
    "ParseIssue",
    "PassiveIdentifier",
    "PatternFailure",
    "Probe",
    "ProbeDatabase",
    "ProbesFileError",
    "ServiceInventory",
    "ServiceMatch",
    "ServiceRecord",
    "identify_passive",
    "load_probes",
    "record_from_match",
]
