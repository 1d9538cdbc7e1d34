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

__all__ = ["LoginThrottle"]

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
