"""The site model and its rules (pure): servers, roles, cameras, encryption, failover."""

from watchkeep.site._model import (
    DEFAULT_PORTS,
    Camera,
    CertificateStatus,
    Readiness,
    RuleBreach,
    Server,
    ServerRole,
)
from watchkeep.site._rules import (
    FailoverMove,
    encryption_blockers,
    identity_change,
    plan_failover,
    registration_blocker,
    site_breaches,
    visible_servers,
)

__all__ = [
    "DEFAULT_PORTS",
    "Camera",
    "CertificateStatus",
    "FailoverMove",
    "Readiness",
    "RuleBreach",
    "Server",
    "ServerRole",
    "encryption_blockers",
    "identity_change",
    "plan_failover",
    "registration_blocker",
    "site_breaches",
    "visible_servers",
]
