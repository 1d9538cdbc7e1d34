"""The server processes: management, recording (and failover) and mobile."""

from __future__ import annotations

from watchkeep.servers._base import ServerProcess
from watchkeep.servers._config import ServerConfig, load_config
from watchkeep.site import ServerRole

__all__ = ["ServerConfig", "ServerProcess", "load_config", "server_for"]


def server_for(config: ServerConfig) -> ServerProcess:
    if config.role is ServerRole.MANAGEMENT:
        from watchkeep.servers.management import ManagementServer

        return ManagementServer(config)
    if config.role.records:
        from watchkeep.servers.recording import RecordingServer

        return RecordingServer(config)
    from watchkeep.servers.mobile import MobileServer

    return MobileServer(config)
