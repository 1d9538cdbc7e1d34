"""Checks of the parties around a certificate: who trusts the site CA, who can read a key."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from watchkeep.doctor._helpers import copy_ca_fix, fingerprint_prefix, relayed, trust_install_fix
from watchkeep.doctor._model import Issue, Severity, check
from watchkeep.doctor._snapshot import HOME_PARTY, SiteSnapshot, TrustStoreFacts

__all__ = ["CREATE_ACCOUNT", "key_service_account", "trust_installed"]


def _store_issues(snapshot: SiteSnapshot, store: TrustStoreFacts) -> Iterator[Issue]:
    fix = trust_install_fix(snapshot, store.directory)
    if store.error is not None:
        yield Issue(
            store.party,
            f"the trust store {store.directory} of {store.party} cannot be read: {store.error}",
            fix,
        )
        return
    for ca in snapshot.site_cas:
        if not store.holds(ca):
            yield Issue(
                store.party,
                f"the trust store {store.directory} of {store.party} does not hold the site CA "
                f"{ca.subject.rfc4514_string()} ({fingerprint_prefix(ca)}): {store.party} "
                "cannot verify the servers it connects to",
                fix,
            )


@check(
    "trust.installed",
    Severity.ERROR,
    summary="""The CA certificate is in the trust store of every party that verifies the
    server, before encryption is enabled (enabling is refused otherwise).""",
    requirement="""The public CA certificate must be trusted on all client computers. In
    this way the clients can verify the validity of the certificates issued by the CA. For
    manually distributed certificates, certificates must be installed before the client can
    make such a verification.""",
)
def trust_installed(snapshot: SiteSnapshot) -> Iterator[Issue]:
    status = snapshot.status or {}
    named = status.get("site_ca_sha256_fingerprint")
    if not snapshot.site_cas and named:
        yield Issue(
            HOME_PARTY,
            f"no trust store on this host holds the site CA (sha256 {named}) that the "
            "management server's certificate is issued by, and this home has no CA",
            copy_ca_fix(snapshot, "").rstrip(),
        )
    if snapshot.home_trust is not None:
        yield from _store_issues(snapshot, snapshot.home_trust)
    for local in snapshot.local:
        if local.trust is None:
            yield Issue(
                local.name,
                f"{local.config} sets no [tls] trust_store: {local.name} cannot verify the "
                "servers it connects to, nor their client certificates",
                f"set trust_store = DIR under [tls] in {local.config}, then: "
                f"{snapshot.cli} trust install --store DIR",
            )
            continue
        yield from _store_issues(snapshot, local.trust)
    yield from relayed(snapshot, "trust.installed")


@check(
    "key.service_account",
    Severity.ERROR,
    summary="""The account that runs the server can open its private key (every directory
    on the way included); nobody else can (owner = service account, mode 0600).""",
    requirement="""The service account that runs the recording server must have access to
    the private key of the certificate on the recording server.""",
)
def key_service_account(snapshot: SiteSnapshot) -> Iterator[Issue]:
    for local in snapshot.local:
        key = local.key
        if key is None:
            continue
        if key.error is not None:
            yield Issue(
                local.name,
                f"the private key {key.path} of {local.name} cannot be used: {key.error}",
                f"check [tls] key in {local.config}",
            )
            continue
        account = key.service_account
        if not key.account_exists:
            yield Issue(
                local.name,
                f"the service account {account} that runs {local.name} does not exist on "
                "this host, so nobody can run it with its key",
                f"create it: {CREATE_ACCOUNT.format(account=account)} (or set service_account "
                f"under [server] in {local.config})",
            )
            continue
        if key.owner is not None and key.owner != account:
            yield Issue(
                local.name,
                f"the private key {key.path} is owned by {key.owner}, not by the service "
                f"account {account} that runs {local.name}",
                f"chown {account} {key.path}",
            )
        if key.mode is not None and key.mode & 0o077:
            who = f" ({'; '.join(key.readers)})" if key.readers else ""
            yield Issue(
                local.name,
                f"the private key {key.path} has mode {stat.S_IMODE(key.mode):04o}: group and "
                f"others can reach it{who}; only the service account may",
                f"chmod 600 {key.path}",
            )
        elif key.mode is not None and not key.mode & stat.S_IRUSR:
            yield Issue(
                local.name,
                f"the private key {key.path} has mode {stat.S_IMODE(key.mode):04o}: the "
                f"service account {account} cannot read it",
                f"chmod 600 {key.path}",
            )
        elif key.unreachable is not None and not key.unreachable.is_file:
            yield Issue(
                local.name,
                f"the service account {account} cannot open the private key {key.path} of "
                f"{local.name}: {key.unreachable.reason}",
                _reach_fix(account, key.path, key.unreachable.path),
            )
    yield from relayed(snapshot, "key.service_account")


# How docs/deployment.md creates the account that runs the servers.
CREATE_ACCOUNT = (
    "useradd --system --user-group --home-dir /var/lib/watchkeep --shell /usr/sbin/nologin "
    "{account}"
)


def _reach_fix(account: str, key: Path, directory: Path) -> str:
    """Open the way for the service account without opening the key to anyone else."""
    if directory == key.parent:
        # The key's own directory is the server's: give it to its account.
        return f"chown {account} {directory} && chmod 700 {directory}"
    # A directory further up may hold others' files: let every account pass, list nothing.
    return f"chmod o+x {directory}"
