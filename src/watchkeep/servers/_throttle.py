"""Log-in rate limiting (pure: the clock is passed in).

After ``free`` failed log-ins in a row for one key (an account, or a client address), each
further failure shuts that key out for twice as long as the one before: 1 s, 2 s, 4 s, ...
up to ``max_delay``. A successful log-in clears the key; a key left alone for
``forget_after`` seconds is forgotten. While a key is shut out its log-ins are refused
before the password is even checked, so guessing costs the guesser time, and the server
no scrypt work.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FamiliarAddresses", "LoginThrottle"]

# Keys remembered at most: past this, the longest-quiet ones are dropped (a flood of
# invented user names must not grow the server's memory without bound).
MAX_KEYS = 10_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        free: int,
        *,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        forget_after: float = 900.0,
    ) -> None:
        if free < 1:
            raise ValueError("at least one failed log-in must be allowed before back-off")
        self.free = free
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._records: dict[str, _Record] = {}

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        if now - record.last > self.forget_after and now >= record.blocked_until:
            del self._records[key]
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failures(self, key: str) -> int:
        record = self._records.get(key)
        return record.failures if record else 0

    def failed(self, key: str, now: float) -> float:
        """Count a failed log-in; the seconds ``key`` is now shut out for (0: not yet)."""
        self.retry_after(key, now)  # forget a stale record first
        record = self._records.setdefault(key, _Record())
        record.failures += 1
        record.last = now
        if len(self._records) > MAX_KEYS:
            self._forget_quietest()
        over = record.failures - self.free
        if over < 0:
            return 0.0
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(over, 30))
        record.blocked_until = now + delay
        return delay

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)

    def _forget_quietest(self) -> None:
        # Down to nine tenths at once, so that a flood sorts the keys once in a while, not
        # at every failure.
        by_age = sorted(self._records, key=lambda k: self._records[k].last)
        for key in by_age[: len(by_age) - MAX_KEYS * 9 // 10]:
            del self._records[key]


# How long an address that logged in to an account stays familiar to it, and how many
# addresses an account remembers (the most recent).
FAMILIAR_FOR = 30 * 86400.0
FAMILIAR_PER_ACCOUNT = 16


class FamiliarAddresses:
    """The client addresses each account logged in from lately ("smart lockout").

    Failed log-ins to an account are counted apart for the addresses it is known to log in
    from and for all others: whoever guesses from elsewhere shuts out only log-ins from
    elsewhere, never the user at its usual place (the OWASP authentication cheat sheet's
    answer to lock-out as a denial of service). The per-address limit still applies to all.
    """

    def __init__(self, *, keep_for: float = FAMILIAR_FOR, per_account: int = FAMILIAR_PER_ACCOUNT):
        self.keep_for = keep_for
        self.per_account = per_account
        self._seen: dict[str, dict[str, float]] = {}

    def account_key(self, account: str, address: str, now: float) -> str:
        """The key the account throttle counts a log-in of ``account`` from ``address`` on."""
        seen = self._seen.get(account, {}).get(address)
        familiar = seen is not None and now - seen <= self.keep_for
        return f"{account}\n{'familiar' if familiar else 'elsewhere'}"

    def logged_in(self, account: str, address: str, now: float) -> None:
        addresses = self._seen.pop(account, {})
        addresses.pop(address, None)
        addresses[address] = now
        while len(addresses) > self.per_account:
            del addresses[next(iter(addresses))]
        self._seen[account] = addresses  # most recent account last
        while len(self._seen) > MAX_KEYS:
            del self._seen[next(iter(self._seen))]
