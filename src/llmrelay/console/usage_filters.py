"""What the usage page shows: a period of UTC days and, optionally, one user or one key.

Everything comes from the query string (the page's GET form and its links), so a view can be
bookmarked and the CSV export takes the very same parameters. Bad input raises
:class:`FilterError` with a message for the page, never a server error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from llmrelay.console.views import Viewer
from llmrelay.store.keys import KeyNotFound, KeyRecord, KeyStore
from llmrelay.store.users import UserNotFound, UserStore

QUICK_DAYS = (7, 30, 90)
DEFAULT_DAYS = 30
MAX_DAYS = 366
# Far enough from date.min/date.max that a day before or after never overflows.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)


class FilterError(ValueError):
    """Query parameters the page cannot use; the message says why, in words."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Period:
    since: date  # first UTC day, inclusive
    until: date  # last UTC day, inclusive
    quick: int | None = None  # the "last N days" link it came from, if any

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1

    def each_day(self) -> list[date]:
        return [self.since + timedelta(days=i) for i in range(self.days)]


@dataclass(frozen=True, slots=True)
class Filters:
    period: Period
    user: str | None = None  # user name (admins only)
    user_id: int | None = None  # whose usage: always set for a non-admin
    key: str | None = None  # key name
    key_id: int | None = None

    def query(self, **extra: str) -> str:
        """The query string that asks for this view again (dates spelt out)."""
        params = {"from": self.period.since.isoformat(), "to": self.period.until.isoformat()}
        if self.user:
            params["user"] = self.user
        if self.key:
            params["key"] = self.key
        return urlencode(params | extra)

    def quick_query(self, days: int) -> str:
        """The query string for the last ``days`` days with the same user and key."""
        params = {"days": str(days)}
        if self.user:
            params["user"] = self.user
        if self.key:
            params["key"] = self.key
        return urlencode(params)


def today() -> date:
    return datetime.now(UTC).date()


def _day(params: Mapping[str, str], name: str, label: str) -> date | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise FilterError(f"“{label}” must be a date like 2025-01-31, not “{text}”.") from None
    if not FIRST_DAY <= value <= LAST_DAY:
        raise FilterError(f"“{label}” must be between {FIRST_DAY} and {LAST_DAY}.")
    return value


def parse_period(params: Mapping[str, str], now: date | None = None) -> Period:
    """``from``/``to`` (either may be left out), else ``days`` (the last N days up to today),
    else the last 30 days."""
    current = now or today()
    since, until = _day(params, "from", "From"), _day(params, "to", "To")
    if since is None and until is None:
        days = _quick_days(params.get("days", "").strip())
        return Period(current - timedelta(days=days - 1), current, days)
    if until is None:
        assert since is not None
        until = max(since, current)
    if since is None:
        since = until - timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise FilterError(f"“From” ({since}) is after “To” ({until}).")
    period = Period(since, until)
    if period.days > MAX_DAYS:
        raise FilterError(
            f"A period can be at most {MAX_DAYS} days; {since} to {until} is {period.days}."
        )
    return period


def _quick_days(text: str) -> int:
    if not text:
        return DEFAULT_DAYS
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise FilterError(f"“days” must be a whole number from 1 to {MAX_DAYS}, not “{text}”.")
    return int(text)


async def parse_filters(
    params: Mapping[str, str], viewer: Viewer, keys: KeyStore, users: UserStore
) -> Filters:
    """The period, user and key asked for, checked against what this viewer may see: a user
    sees only their own usage and keys; an admin anyone's."""
    period = parse_period(params)
    user = params.get("user", "").strip() or None
    key_name = params.get("key", "").strip() or None
    user_id: int | None = None if viewer.admin else viewer.user_id
    if user is not None and viewer.admin:
        try:
            user_id = (await users.get(user)).id
        except UserNotFound:
            raise FilterError(f"There is no user named “{user}”.") from None
    elif user is not None and user != viewer.user_name:
        raise FilterError("Only admins can see the usage of other users.", 403)
    key: KeyRecord | None = None
    if key_name is not None:
        try:
            key = await keys.get(key_name)
        except KeyNotFound:
            key = None
        if key is None or not viewer.may_see(key):
            # Others' keys look absent, as on the keys page.
            raise FilterError(f"You have no key named “{key_name}”.", 404)
    return Filters(
        period,
        user if viewer.admin else None,
        user_id,
        key.name if key else None,
        key.id if key else None,
    )
