"""Where each server of a local site keeps its files, below the site's home.

A server named NAME lives in ``Home.server_dir(NAME)`` (HOME/servers/NAME/): its config
``server.toml`` (``Home.server_config``, where the doctor finds it), its log ``server.log``,
``tls/`` with its certificate chain and key (named as ``cert issue --out`` names them),
``trust/`` its own trust store, and ``data/`` what the server writes itself. Nothing is
shared between two servers' directories, as nothing could be between two machines.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchkeep._home import Home
from watchkeep.pki import Role, certificate_name
from watchkeep.site import ServerRole

__all__ = ["LocalServer"]


@dataclass
class LocalServer:
    """One server of a local site: who it is, where its files are, its process once started.

    ``extra`` holds more config tables (or more keys for one the site writes), table name
    -> key -> value; ``LocalSite.write_config`` writes them too."""

    name: str
    role: ServerRole
    host: str
    address: str
    ports: dict[str, int]
    directory: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The size of its log when its process last started: what follows is that run's.
    log_start: int = 0

    @classmethod
    def laid_out(
        cls, home: Home, name: str, role: ServerRole, host: str, address: str, ports: dict[str, int]
    ) -> LocalServer:
        """The server ``name`` in its directory of ``home``."""
        directory = home.server_dir(name)
        return cls(
            name=name,
            role=role,
            host=host,
            address=address,
            ports=ports,
            directory=directory,
            config=home.server_config(name),
            log=directory / "server.log",
        )

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    @property
    def trust_dir(self) -> Path:
        return self.directory / "trust"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def cert_role(self) -> Role:
        return Role(self.role.value)

    @property
    def chain(self) -> Path:
        return self.tls_dir / f"{certificate_name(self.cert_role, self.host)}.chain.pem"

    @property
    def key(self) -> Path:
        return self.tls_dir / f"{certificate_name(self.cert_role, self.host)}.key"
