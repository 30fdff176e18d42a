"""A realistic, reproducible demo: accounts across time zones, five meters, 90 days of usage.

Everything is derived from a fixed seed and the end date, never from the clock or from a
running random state: the events of (account, meter, local day) come from a generator seeded
by exactly those, and their transaction ids are `demo-<account>-<meter>-<yyyymmdd>-<n>`. So a
second run on the same day sends the same events with the same content and stores nothing new
(they come back `duplicate`), and a run on a later day only adds the days that are new.

Events go through `events_ingest`, the one write path for events, in batches of 1,000, so
the content hashes, quarantine and rollup inbox are exactly what the API would produce.

History covers whole local days that ended before midnight UTC of the end date, so nothing the
demo sends is in the future, whatever the hour.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.db import transaction

from metering import periods
from metering.models import Account, ApiKey
from metering.services.accounts import account_upsert, meter_upsert
from metering.services.api_keys import api_key_hash
from metering.services.ingest import events_ingest
from metering.services.table_stats import event_tables_analyze

SEED = "meterops-demo-1"
# Known on purpose (demo logins printed by `make run`); the command refuses to run with DEBUG off.
DEMO_PASSWORD = "meterops-demo"  # noqa: S105
# A fixed key so a second run can print it again; only ever created with DEBUG on (or --force).
DEMO_API_KEY = "mo_demo_local-development-only-key"
DEMO_API_KEY_SCOPES = ["adjust", "ingest", "manage", "read"]
BATCH_SIZE = 1000

# (username, group or None for the superuser)
DEMO_USERS = (
    ("admin", None),
    ("support", "Support"),
    ("manager", "Manager"),
    ("auditor", "Auditor"),
)

# The first six are always used, so even a tiny demo covers UTC+5:30, UTC+5:45 and DST zones.
TIMEZONES = (
    ("America/New_York", "USD", "us-east"),
    ("Europe/Berlin", "EUR", "eu-central"),
    ("Asia/Kolkata", "INR", "ap-south"),
    ("Asia/Kathmandu", "USD", "ap-south"),
    ("Australia/Sydney", "AUD", "ap-southeast"),
    ("UTC", "USD", "us-east"),
    ("America/Los_Angeles", "USD", "us-west"),
    ("Europe/London", "GBP", "eu-west"),
    ("Asia/Tokyo", "JPY", "ap-northeast"),
    ("America/Sao_Paulo", "USD", "sa-east"),
)

# tier -> (share of accounts, size factor)
TIERS = {
    "free": (0.3, 0.25),
    "starter": (0.3, 0.7),
    "growth": (0.25, 1.6),
    "enterprise": (0.15, 4.0),
}

NAME_FIRST = (
    "Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay",
    "Soylent", "Cyberdyne", "Tyrell", "Wonka", "Gringotts", "Oscorp", "Aperture", "Massive",
    "Pied", "Blue", "Red",
)  # fmt: skip
NAME_SECOND = (
    "Labs", "Analytics", "Cloud", "Logistics", "Health", "Retail", "Media", "Robotics", "Foods",
    "Energy", "Travel", "Finance", "Games", "Studios", "Systems", "Networks", "Piper", "Harbor",
    "Works", "Data",
)  # fmt: skip
INDUSTRIES = ("saas", "retail", "fintech", "health", "media", "logistics", "gaming", "ai")

METERS = (
    {
        "code": "api_calls",
        "name": "API calls",
        "aggregation": "count",
        "value_property": "",
        "dimensions": ["endpoint", "region"],
        "unit": "calls",
    },
    {
        "code": "storage_gb",
        "name": "Storage",
        "aggregation": "max",
        "value_property": "gb",
        "dimensions": ["region"],
        "unit": "GB",
    },
    {
        "code": "compute_seconds",
        "name": "Compute time",
        "aggregation": "sum",
        "value_property": "seconds",
        "dimensions": ["instance_type"],
        "unit": "seconds",
    },
    {
        "code": "active_users",
        "name": "Monthly active users",
        "aggregation": "unique_count",
        "value_property": "user_id",
        "dimensions": [],
        "unit": "users",
    },
    {
        "code": "tokens",
        "name": "LLM tokens",
        "aggregation": "sum",
        "value_property": "tokens",
        "dimensions": ["model"],
        "unit": "tokens",
    },
)

ENDPOINTS = (("/v1/search", 5), ("/v1/orders", 3), ("/v1/users", 2), ("/v1/reports", 1))
INSTANCE_TYPES = (("small", 5), ("medium", 3), ("large", 1), ("gpu", 0.3))
MODELS = (("mini", 6), ("standard", 3), ("large", 1))
# Local weekday (Mon=0) -> share of a weekday's usage.
WEEKDAY_FACTOR = (1.0, 1.05, 1.05, 1.0, 0.9, 0.35, 0.25)
SPIKE_DAYS = 3
# Daily events per unit of level, per meter: high enough that an ordinary account never goes
# 48 hours without a call (the default drop rule), even a free one over a weekend.
EVENTS_PER_LEVEL = {"api_calls": 25, "compute_seconds": 12, "tokens": 12}
# ... and never fewer than this a day on average, weekends included, so a small account's quiet
# Sunday is not 48 hours of silence nor a day a single long job makes look like a spike.
MIN_EVENTS_PER_DAY = 8

# The accounts that tell a story (README, "admin tour"), by position in the demo's account list;
# every other account is ordinary and should raise nothing. Tiers are fixed for the stories
# whose bill matters: a starter plan has no minimum commitment that would hide a spike.
STORY_SPIKE = "spike"  # a runaway GPU job since yesterday noon: spike alert, invoice shock
STORY_SILENT = "silent"  # the integration stopped sending three days ago: drop alerts
STORY_NEAR_QUOTA = "near_quota"  # an account limit (metadata.limits) it is close to
STORY_HOLD = "hold"  # a billing hold (opened by the back office's demo step)
STORY_CREDIT = "credit"  # a credit waiting for approval (slot: adjustments)
STORY_MISMATCH = "mismatch"  # the simulated provider's seeded faults hit this account only
STORIES = {
    2: (STORY_SPIKE, "starter"),
    3: (STORY_SILENT, "growth"),
    4: (STORY_NEAR_QUOTA, None),
    5: (STORY_HOLD, None),
    6: (STORY_CREDIT, None),
    7: (STORY_MISMATCH, None),
}
# The runaway job: one GPU run every RUNAWAY_EVERY, each RUNAWAY_SECONDS long.
RUNAWAY_EVERY = timedelta(minutes=4)
RUNAWAY_SECONDS = 600
RUNAWAY_INSTANCE = "gpu"


@dataclass(frozen=True)
class DemoAccount:
    external_id: str
    name: str
    timezone: str
    currency: str
    region: str
    tier: str
    size: float
    growth: float
    spikes: bool
    metadata: dict
    story: str = ""


@dataclass
class DemoSummary:
    start: date
    end: date
    accounts_created: int = 0
    accounts_total: int = 0
    meters_created: int = 0
    users_created: list[str] = field(default_factory=list)
    api_key_created: bool = False
    api_key: str = DEMO_API_KEY
    events: Counter = field(default_factory=Counter)
    spiking_accounts: list[str] = field(default_factory=list)


def demo_accounts(count: int) -> list[DemoAccount]:
    """The first `count` demo accounts; a larger count extends the list, never reshuffles it."""
    names = [f"{first} {second}" for first in NAME_FIRST for second in NAME_SECOND]
    random.Random(SEED).shuffle(names)
    tier_names = list(TIERS)
    tier_weights = [share for share, _size in TIERS.values()]
    accounts = []
    for index in range(count):
        rng = random.Random(f"{SEED}:account:{index}")
        base_name = names[index % len(names)]
        name = base_name if index < len(names) else f"{base_name} {index // len(names) + 1}"
        zone, currency, region = (
            TIMEZONES[index] if index < len(TIMEZONES) else rng.choice(TIMEZONES)
        )
        tier = rng.choices(tier_names, weights=tier_weights)[0]
        size = TIERS[tier][1] * rng.lognormvariate(0, 0.35)
        story, story_tier = STORIES.get(index, ("", None))
        if story_tier:
            tier = story_tier
        accounts.append(
            DemoAccount(
                external_id=name.lower().replace(" ", "-"),
                name=name,
                timezone=zone,
                currency=currency,
                region=region,
                tier=tier,
                size=size,
                growth=rng.uniform(-0.1, 0.6),
                # Only the spike story's account spikes: every other one should raise nothing.
                spikes=story == STORY_SPIKE,
                metadata={"industry": rng.choice(INDUSTRIES), "demo": True}
                | ({"demo_story": story} if story else {}),
                story=story,
            )
        )
    return accounts


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([name for name, _ in options], weights=[w for _, w in options])[0]


def _local_day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return periods.day_bounds_utc(day, zone)


def _business_hours_offset(rng: random.Random) -> float:
    """Fraction of the local day: mostly office hours, some around the clock."""
    if rng.random() < 0.8:
        return rng.triangular(7.5, 21, 14) / 24
    return rng.random()


def _count(rng: random.Random, expected: float) -> int:
    return max(0, round(rng.gauss(expected, max(1.0, expected**0.5))))


def demo_day_events(
    account: DemoAccount, day: date, *, day_index: int, days: int, cutoff: datetime
) -> Iterator[dict]:
    """Lago-format events of one account for one local day, deterministic in its inputs."""
    zone = ZoneInfo(account.timezone)
    start, end = _local_day_bounds(day, zone)
    length = (end - start).total_seconds()
    level = account.size * WEEKDAY_FACTOR[day.weekday()] * (1 + account.growth * day_index / days)
    spike = 1.0
    if account.spikes and day_index >= days - SPIKE_DAYS:
        spike = 6.0
    if account.story == STORY_SILENT and day_index >= days - SPIKE_DAYS:
        return
    stamp = day.strftime("%Y%m%d")

    def at(fraction: float) -> datetime:
        return start + timedelta(seconds=int(fraction * length))

    for meter in METERS:
        code = meter["code"]
        rng = random.Random(f"{SEED}:{account.external_id}:{code}:{day.isoformat()}")
        readings: list[tuple[datetime, dict]] = []
        if code == "api_calls":
            for _ in range(
                _count(rng, max(MIN_EVENTS_PER_DAY, EVENTS_PER_LEVEL[code] * level) * spike)
            ):
                props = {"endpoint": _weighted(rng, ENDPOINTS), "region": account.region}
                readings.append((at(_business_hours_offset(rng)), props))
        elif code == "storage_gb":
            # Four readings a day of a slowly growing volume; max is the day's high-water mark.
            base = 40 * account.size * (1 + 0.5 * account.growth * day_index / days)
            for quarter in range(4):
                gb = base * rng.uniform(0.97, 1.03)
                readings.append((at(quarter / 4), {"gb": f"{gb:.3f}", "region": account.region}))
        elif code == "compute_seconds":
            for _ in range(
                _count(rng, max(MIN_EVENTS_PER_DAY, EVENTS_PER_LEVEL[code] * level) * spike)
            ):
                seconds = rng.lognormvariate(4.5, 0.5)
                props = {
                    "seconds": f"{seconds:.1f}",
                    "instance_type": _weighted(rng, INSTANCE_TYPES),
                }
                readings.append((at(_business_hours_offset(rng)), props))
        elif code == "active_users":
            pool = max(3, int(20 * account.size))
            share = 0.45 if day.weekday() < 5 else 0.15
            active = rng.sample(range(pool), k=max(1, min(pool, _count(rng, pool * share))))
            for user in sorted(active):
                props = {"user_id": f"{account.external_id}-user-{user}"}
                readings.append((at(_business_hours_offset(rng)), props))
        elif code == "tokens":
            for _ in range(
                _count(rng, max(MIN_EVENTS_PER_DAY, EVENTS_PER_LEVEL[code] * level) * spike)
            ):
                props = {
                    "tokens": int(rng.lognormvariate(7.5, 0.5)),
                    "model": _weighted(rng, MODELS),
                }
                readings.append((at(_business_hours_offset(rng)), props))
        for n, (occurred_at, props) in enumerate(readings):
            if occurred_at >= cutoff:
                continue
            yield {
                "transaction_id": f"demo-{account.external_id}-{code}-{stamp}-{n}",
                "external_customer_id": account.external_id,
                "code": code,
                "timestamp": occurred_at.isoformat(),
                "properties": props,
            }


def demo_runaway_events(account: DemoAccount, *, end: date, now: datetime) -> Iterator[dict]:
    """The spike story: a GPU job that has run away since noon (local) of the day before `end`,
    one run every RUNAWAY_EVERY up to `now`. Timestamps and ids depend only on the account and
    `end`, so a later run adds the newer runs and stores nothing twice."""
    if account.story != STORY_SPIKE:
        return
    zone = ZoneInfo(account.timezone)
    origin = datetime.combine(end - timedelta(days=1), time(12), zone).astimezone(UTC)
    n = 0
    while origin + n * RUNAWAY_EVERY < now - timedelta(minutes=1):
        occurred_at = origin + n * RUNAWAY_EVERY
        yield {
            "transaction_id": f"demo-{account.external_id}-runaway-{end:%Y%m%d}-{n}",
            "external_customer_id": account.external_id,
            "code": "compute_seconds",
            "timestamp": occurred_at.isoformat(),
            "properties": {"seconds": str(RUNAWAY_SECONDS), "instance_type": RUNAWAY_INSTANCE},
        }
        n += 1


def demo_quarantine_events(end: date) -> list[dict]:
    """Events nobody can attribute yet: an account and a meter that do not exist."""
    noon = datetime.combine(end - timedelta(days=1), time(12), UTC)
    items = [
        {
            "transaction_id": f"demo-quarantine-account-{n}",
            "external_customer_id": "zenith-freight",
            "code": "api_calls",
            "timestamp": (noon - timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "properties": {"endpoint": "/v1/orders", "region": "eu-west"},
        }
        for n in range(5)
    ]
    items += [
        {
            "transaction_id": f"demo-quarantine-meter-{n}",
            "external_customer_id": demo_accounts(1)[0].external_id,
            "code": "gpu_hours",
            "timestamp": (noon - timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "properties": {"hours": "1.5"},
        }
        for n in range(2)
    ]
    return items


def demo_users_ensure() -> list[str]:
    """Create the demo staff users if missing; existing users are left exactly as they are."""
    User = get_user_model()
    created = []
    encoded = None
    for username, group_name in DEMO_USERS:
        if User.objects.filter(username=username).exists():
            continue
        # One hash for the shared demo password: a PBKDF2 hash costs about a second.
        encoded = encoded or make_password(DEMO_PASSWORD)
        user = User(
            username=username,
            email=f"{username}@example.com",
            is_staff=True,
            is_superuser=group_name is None,
            password=encoded,
        )
        user.save()
        if group_name:
            user.groups.add(Group.objects.get(name=group_name))
        created.append(username)
    return created


def demo_api_key_ensure() -> bool:
    """Create the fixed demo key if missing. Returns whether it was created."""
    key_hash = api_key_hash(DEMO_API_KEY)
    if ApiKey.objects.filter(key_hash=key_hash).exists():
        return False
    ApiKey.objects.create(
        name="demo (local development only)",
        prefix=DEMO_API_KEY[:12],
        key_hash=key_hash,
        scopes=DEMO_API_KEY_SCOPES,
    )
    return True


def demo_seed(
    *,
    days: int = 90,
    accounts: int = 40,
    end: date | None = None,
    on_day: Callable[[date, Counter], None] | None = None,
    actor=None,
    now: datetime | None = None,
) -> DemoSummary:
    """Seed accounts, meters, `days` days of events before `end` (default: today, UTC), users.

    Safe to run again: existing rows are left alone and events come back as duplicates.
    """
    if days < 1 or accounts < 1:
        raise ValueError("days and accounts must be at least 1")
    end = end or datetime.now(UTC).date()
    start = end - timedelta(days=days)
    cutoff = datetime.combine(end, time(0), UTC)
    summary = DemoSummary(start=start, end=end)

    with transaction.atomic():
        summary.users_created = demo_users_ensure()
        summary.api_key_created = demo_api_key_ensure()
        for meter in METERS:
            _meter, created = meter_upsert(**meter, actor=actor)
            summary.meters_created += created
        plan = demo_accounts(accounts)
        for account in plan:
            _account, created = account_upsert(
                external_id=account.external_id,
                name=account.name,
                timezone=account.timezone,
                currency=account.currency,
                tier=account.tier,
                metadata=account.metadata,
                actor=actor,
            )
            summary.accounts_created += created
    summary.accounts_total = Account.objects.count()
    summary.spiking_accounts = [a.external_id for a in plan if a.spikes]

    for day_index in range(days):
        day = start + timedelta(days=day_index)
        items = [
            item
            for account in plan
            for item in demo_day_events(account, day, day_index=day_index, days=days, cutoff=cutoff)
        ]
        day_counts = _ingest(items)
        summary.events.update(day_counts)
        if on_day is not None:
            on_day(day, day_counts)
    summary.events.update(_ingest(demo_quarantine_events(end)))
    # Up to the present only when the history ends today (a past --end-date stays in the past).
    now = now or datetime.now(UTC)
    now = now if end >= now.date() else cutoff
    runaway = [item for account in plan for item in demo_runaway_events(account, end=end, now=now)]
    summary.events.update(_ingest(runaway))
    # Fresh statistics, so the admin's estimated counts and the query plans fit the new rows.
    event_tables_analyze()
    return summary


def _ingest(items: list[dict]) -> Counter:
    counts: Counter = Counter()
    # Oldest first, and `now` just after the batch's newest event, so received_at and the
    # late flag look like live traffic rather than a bulk backfill.
    items.sort(key=lambda item: item["timestamp"])
    for offset in range(0, len(items), BATCH_SIZE):
        batch = items[offset : offset + BATCH_SIZE]
        newest = datetime.fromisoformat(batch[-1]["timestamp"])
        result = events_ingest(items=batch, fmt="lago", now=newest + timedelta(seconds=30))
        counts.update(item.status for item in result.results)
    return counts
