"""Who can open a file: the permission check the kernel makes, done for another account.

key.service_account asks two questions of a private key: can the account that runs the
server open it, and can anybody else? The owner and mode of the key file alone answer
neither: a directory on the way (``/etc/watchkeep`` made by root with mode 0700, say)
stops the service account before it reaches a key it owns, and a key readable by its group
is readable by every member of that group. The questions are answered here from the
account's uid and groups and from every directory on the path, as ``access(2)`` would for
that account (root passes every permission check; ACLs are not read).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Account", "Blocked", "blocked_for", "name_of_group", "name_of_user", "other_readers"]

_SEARCH, _READ = 1, 4  # the x and r bits of one rwx triplet


@dataclass(frozen=True)
class Account:
    """A local account as the permission check sees it."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> Account | None:
        """The account called ``name``, or None when this host has no such account."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        gids = {entry.pw_gid}
        gids.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
        return cls(name, entry.pw_uid, frozenset(gids))

    def may(self, st: os.stat_result, bits: int) -> bool:
        """True when this account has ``bits`` (r=4, x=1) on a file with status ``st``."""
        if self.uid == 0:
            return True
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == self.uid:
            granted = mode >> 6
        elif st.st_gid in self.gids:
            granted = mode >> 3
        else:
            granted = mode
        return granted & bits == bits


@dataclass(frozen=True)
class Blocked:
    """Where an account is stopped on its way to a file, and why."""

    path: Path  # the directory it cannot pass, or the file it cannot read
    is_file: bool
    reason: str


def name_of_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def name_of_group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _describe(st: os.stat_result) -> str:
    return (
        f"owner {name_of_user(st.st_uid)}, group {name_of_group(st.st_gid)}, "
        f"mode {stat.S_IMODE(st.st_mode):04o}"
    )


def blocked_for(path: Path, account: Account) -> Blocked | None:
    """Where ``account`` is stopped opening ``path`` for reading; None when it can.

    Every directory from the root down must let the account search it (x), and the file
    must let it read (r); a directory as ``path`` must let it search. Raises OSError when
    a directory or the file cannot be examined.
    """
    target = path.resolve()
    for directory in reversed(target.parents):
        st = os.stat(directory)
        if not account.may(st, _SEARCH):
            return Blocked(
                directory,
                False,
                f"the directory {directory} ({_describe(st)}) does not let {account.name} through",
            )
    st = os.stat(target)
    if stat.S_ISDIR(st.st_mode):
        if account.may(st, _SEARCH):
            return None
        return Blocked(
            target,
            False,
            f"the directory {target} ({_describe(st)}) does not let {account.name} through",
        )
    if not account.may(st, _READ):
        return Blocked(
            target, True, f"{target} ({_describe(st)}) is not readable by {account.name}"
        )
    return None


def other_readers(st: os.stat_result, account: Account) -> list[str]:
    """Who besides ``account`` (and root) the mode of a file lets read it."""
    mode = stat.S_IMODE(st.st_mode)
    readers = []
    if st.st_uid != account.uid and mode & stat.S_IRUSR:
        readers.append(f"its owner {name_of_user(st.st_uid)}")
    if mode & stat.S_IRGRP:
        members = _members(st.st_gid) - {account.name, name_of_user(st.st_uid)}
        group = name_of_group(st.st_gid)
        if members:
            readers.append(f"the members of group {group} ({', '.join(sorted(members))})")
        else:
            readers.append(f"whoever joins group {group}")
    if mode & stat.S_IROTH:
        readers.append("every account on this host")
    return readers


def _members(gid: int) -> set[str]:
    members = {p.pw_name for p in pwd.getpwall() if p.pw_gid == gid}
    with contextlib.suppress(KeyError):
        members.update(grp.getgrgid(gid).gr_mem)
    return members
