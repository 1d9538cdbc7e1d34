"""The site model and its rules (pure): servers, roles, cameras, encryption, failover."""

from watchkeep.site._model import (
    DEFAULT_PORTS,
    Camera,
    CertificateStatus,
    Readiness,
    Server,
    ServerRole,
)
from watchkeep.site._rules import (
    Blocker,
    FailoverMove,
    encryption_blockers,
    plan_failover,
    registration_blocker,
)

__all__ = [
    "DEFAULT_PORTS",
    "Blocker",
    "Camera",
    "CertificateStatus",
    "FailoverMove",
    "Readiness",
    "Server",
    "ServerRole",
    "encryption_blockers",
    "plan_failover",
    "registration_blocker",
]
