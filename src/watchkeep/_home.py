"""Where watchkeep keeps its files: the home directory layout."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVER_CONFIG", "Home", "default_home"]

SERVER_CONFIG = "server.toml"


def default_home() -> Path:
    env = os.environ.get("WATCHKEEP_HOME")
    if env:
        return Path(env)
    return Path.home() / ".watchkeep"


@dataclass(frozen=True)
class Home:
    """The layout of a watchkeep home directory.

    ca/ holds the CA certificate, key and CRL; certs/<name>/ the files of each issued
    certificate (unless issued elsewhere with --out); trust/ the default trust store;
    watchkeep.db the inventory and site database; servers/<name>/ the servers laid out in
    this home (a site on one machine, `watchkeep demo`), each with its server.toml (what
    else each holds: watchkeep.localsite).
    """

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def publish_url_file(self) -> Path:
        """Where the CA's certificate and CRL are published over HTTP (one URL, one line)."""
        return self.ca_dir / "publish-url"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def servers_dir(self) -> Path:
        return self.root / "servers"

    def server_dir(self, name: str) -> Path:
        return self.servers_dir / name

    def server_config(self, name: str) -> Path:
        return self.server_dir(name) / SERVER_CONFIG

    def server_configs(self) -> list[Path]:
        """The configs of the servers laid out in this home, in name order."""
        return sorted(self.servers_dir.glob(f"*/{SERVER_CONFIG}"))

    @property
    def database_url(self) -> str:
        return os.environ.get("WATCHKEEP_DATABASE_URL") or f"sqlite:///{self.root / 'watchkeep.db'}"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
