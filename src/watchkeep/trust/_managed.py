"""The trust stores a CA's home keeps current with its CRL.

A revocation is only as good as the CRL its verifiers hold. The servers fetch theirs from
the management server; the directory stores filled from the CA's home by hand (`trust
install` without a CA file: its own HOME/trust and every `--store DIR` given there) have
nobody to fetch for them, so the CA's home remembers them (HOME/ca/trust-stores, one path
a line) and writes the new CRL into each whenever it publishes one: `cert revoke` and
`ca crl`. A store whose directory is gone is forgotten; one that cannot be written is
reported, never skipped in silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from watchkeep._files import atomic_write
from watchkeep._home import Home
from watchkeep.errors import WatchkeepError
from watchkeep.trust._store import DirectoryTrustStore

__all__ = ["Refreshed", "managed_stores", "refresh_crl_in_stores", "remember_store"]


@dataclass(frozen=True)
class Refreshed:
    """One managed store after a CRL was published: where, and why not when it failed."""

    store: Path
    error: str | None = None


def _list_file(home: Home) -> Path:
    return home.ca_dir / "trust-stores"


def managed_stores(home: Home) -> list[Path]:
    """This home's own store, then every store `trust install` filled from it."""
    stores = [home.trust_dir.absolute()]
    try:
        lines = _list_file(home).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        path = Path(line.strip())
        if line.strip() and path not in stores:
            stores.append(path)
    return stores


def _save(home: Home, stores: list[Path]) -> None:
    extra = [str(p) for p in stores if p != home.trust_dir.absolute()]
    atomic_write(_list_file(home), "".join(f"{p}\n" for p in extra).encode(), mode=0o600)


def remember_store(home: Home, store: Path) -> None:
    """Keep ``store`` current with this CA's CRL from now on."""
    stores = managed_stores(home)
    if store.absolute() not in stores:
        _save(home, [*stores, store.absolute()])


def refresh_crl_in_stores(home: Home) -> list[Refreshed]:
    """Write this CA's current CRL into every store it manages; forget stores now gone."""
    crl = home.crl.read_bytes()
    done: list[Refreshed] = []
    kept: list[Path] = []
    for store in managed_stores(home):
        if not store.is_dir():
            continue
        kept.append(store)
        try:
            DirectoryTrustStore(store).install_crl(crl)
        except WatchkeepError as exc:
            done.append(Refreshed(store, exc.describe()))
            continue
        done.append(Refreshed(store))
    if kept != managed_stores(home):
        _save(home, kept)
    return done
