"""The simulated installed base: accounts, sites, gateways, devices and planted patterns.

:func:`build_fleet` turns ``(seed, customers, start_date, days)`` into a
:class:`Fleet`, the same one every time. Everything random comes from
:func:`derive_rng`, which seeds a private ``random.Random`` from a SHA-256 of
stable strings (never ``hash()``, which Python salts per process), so one
customer's draws do not shift when another customer is added.

Each account carries exactly one behaviour pattern (see :data:`PATTERNS`); the
pattern drives the device timeline (when devices are deployed, which are in
use, how much, how many features) that :mod:`.generate` turns into records.
The pattern is ground truth for tests and the demo (``truth.json``); the
accounts registry a CRM would export does not contain it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from fleetpulse.schemas.accounts import Account

PATTERNS: tuple[str, ...] = (
    "fast_onboarding",
    "stalled_onboarding",
    "steady",
    "gradual_decline",
    "sudden_drop",
    "expansion",
    "gateway_offline",
)
#: Patterns of customers whose contract starts inside the simulated span.
ONBOARDING_PATTERNS = frozenset({"fast_onboarding", "stalled_onboarding"})

SEGMENTS: tuple[str, ...] = ("smb", "mid_market", "enterprise")
ENGAGEMENT_MODELS: tuple[str, ...] = ("digital", "low_touch", "high_touch")

FIRMWARE_VERSIONS: tuple[str, ...] = ("3.1.0", "3.2.0", "3.2.1")
LATEST_FIRMWARE = FIRMWARE_VERSIONS[-1]
SPIKE_FIRMWARE = "3.2.0"
SPIKE_ERROR_CODE = "E731"

FEATURES: tuple[str, ...] = ("scan", "print_color", "duplex", "secure_release", "remote_config")

# Weights of the patterns given to the customers after the first of each kind:
# a realistic book of business is mostly healthy.
_REST_WEIGHTS: dict[str, float] = {
    "steady": 0.60,
    "expansion": 0.09,
    "gradual_decline": 0.08,
    "fast_onboarding": 0.07,
    "sudden_drop": 0.06,
    "stalled_onboarding": 0.05,
    "gateway_offline": 0.05,
}

# Order in which the first accounts get one pattern each: a fleet of one is steady.
_PLANT_ORDER: tuple[str, ...] = (
    "steady",
    "sudden_drop",
    "fast_onboarding",
    "gradual_decline",
    "expansion",
    "stalled_onboarding",
    "gateway_offline",
)

_ENTITLEMENT: dict[str, tuple[int, int]] = {
    "smb": (3, 10),
    "mid_market": (10, 30),
    "enterprise": (30, 80),
}
# USD per entitled device per year; larger contracts buy more software per device.
_PRICE_PER_DEVICE: dict[str, tuple[int, int]] = {
    "smb": (600, 900),
    "mid_market": (800, 1200),
    "enterprise": (1000, 1500),
}
_ENGAGEMENT_WEIGHTS: dict[str, tuple[float, float, float]] = {
    # digital, low_touch, high_touch
    "smb": (0.80, 0.20, 0.00),
    "mid_market": (0.10, 0.60, 0.30),
    "enterprise": (0.00, 0.10, 0.90),
}
_CSMS: tuple[str, ...] = (
    "alex.morgan@vendor.example",
    "priya.shah@vendor.example",
    "jonas.weber@vendor.example",
    "maria.costa@vendor.example",
    "kenji.ito@vendor.example",
)
_NAME_FIRST = (
    "Northwind", "Bluebird", "Cedar", "Harbor", "Summit", "Ironwood", "Silverline",
    "Redwood", "Brightpath", "Granite", "Meridian", "Oakridge", "Pioneer", "Riverside",
    "Sterling", "Willow", "Atlas", "Beacon", "Cobalt", "Evergreen",
)
_NAME_SECOND = (
    "Logistics", "Dental", "Legal", "Clinics", "Realty", "Foods", "Schools", "Labs",
    "Accounting", "Print Works", "Hotels", "Insurance", "Architects", "Pharmacy", "Motors",
)
_NAME_SUFFIX = ("Ltd", "Inc", "GmbH", "LLC", "SA", "BV", "Group")


def derive_rng(seed: int, *parts: object) -> random.Random:
    """A private RNG for one entity, stable across processes and Python versions."""
    key = "\x1f".join([str(seed), *(str(p) for p in parts)]).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def add_years(day: date, years: int) -> date:
    """``day`` moved by whole years; 29 February becomes 28 February in other years."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _even_ranks(rng: random.Random, n: int) -> list[float]:
    """``n`` ranks spread evenly over [0, 1) in random order.

    A device is "in use" when its rank is below the customer's target
    fraction, so the number in use is exactly round(fraction * n) instead of a
    binomial draw that could, by chance, contradict the planted pattern.
    """
    positions = list(range(n))
    rng.shuffle(positions)
    return [(p + 0.5) / n for p in positions]


@dataclass(frozen=True)
class Device:
    """A device and its planned timeline inside the span (day indices from 0)."""

    device_id: str
    customer_id: str
    site_id: str
    gateway_id: str
    rank: float  # in [0, 1): low ranks are deployed first and stay in use longest
    usage_factor: float  # this device's share of the customer's typical runtime
    deploy_day: int | None  # None: installed before the span; else first day it sends
    deploy_at_s: int  # second of deploy_day at which it first boots
    initial_fw: str
    upgrade_day: int | None  # day it moves to LATEST_FIRMWARE (reboots at upgrade_at_s)
    upgrade_at_s: int
    extra: bool  # beyond the entitlement (expansion customers)


@dataclass(frozen=True)
class Gateway:
    gateway_id: str
    customer_id: str
    site_id: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Customer:
    """An account with its installed base and its planted behaviour."""

    account: Account
    pattern: str
    site_ids: tuple[str, ...]
    gateways: tuple[Gateway, ...]
    devices: tuple[Device, ...]
    in_use_fraction: float  # share of devices in use on a normal day
    runtime_h: float  # typical runtime of an in-use device per day, hours
    feature_order: tuple[str, ...]  # the customer's features, most used first
    feature_breadth: int  # how many of feature_order it uses on a normal day
    onboard_day: int | None  # contract start as a day index, for onboarding patterns
    drop_day: int | None  # sudden_drop: first day of the drop
    offline_gateway: str | None  # gateway_offline: the gateway that goes silent

    @property
    def customer_id(self) -> str:
        return self.account.customer_id


@dataclass(frozen=True)
class FirmwareSpike:
    """A fleet-wide burst of errors from one firmware version (a product issue)."""

    version: str
    code: str
    first_day: int
    last_day: int  # inclusive


@dataclass(frozen=True)
class GatewayOutage:
    customer_id: str
    gateway_id: str
    first_day: int
    last_day: int  # inclusive


@dataclass(frozen=True)
class Fleet:
    seed: int
    start_date: date
    days: int
    customers: tuple[Customer, ...]
    firmware_spike: FirmwareSpike
    outages: tuple[GatewayOutage, ...]
    _offline: frozenset[tuple[str, int]] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = {
            (o.gateway_id, d) for o in self.outages for d in range(o.first_day, o.last_day + 1)
        }
        object.__setattr__(self, "_offline", frozenset(pairs))

    @property
    def end_date(self) -> date:
        """The last simulated day (inclusive)."""
        return self.start_date + timedelta(days=self.days - 1)

    def date_of(self, day: int) -> date:
        return self.start_date + timedelta(days=day)

    def gateway_offline(self, gateway_id: str, day: int) -> bool:
        """True when ``gateway_id`` sends nothing on ``day``."""
        return (gateway_id, day) in self._offline

    @property
    def accounts(self) -> tuple[Account, ...]:
        return tuple(c.account for c in self.customers)

    @property
    def gateways(self) -> tuple[Gateway, ...]:
        return tuple(g for c in self.customers for g in c.gateways)

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(d for c in self.customers for d in c.devices)

    def customer(self, customer_id: str) -> Customer:
        for c in self.customers:
            if c.customer_id == customer_id:
                return c
        raise KeyError(customer_id)

    def truth(self) -> dict[str, Any]:
        """The planted ground truth as JSON-ready data (written to ``truth.json``)."""
        spike = self.firmware_spike
        patterns: dict[str, list[str]] = {p: [] for p in PATTERNS}
        customers: dict[str, Any] = {}
        for c in self.customers:
            patterns[c.pattern].append(c.customer_id)
            entry: dict[str, Any] = {
                "pattern": c.pattern,
                "segment": c.account.segment,
                "entitled_devices": c.account.entitled_devices,
                "devices": len(c.devices),
                "gateways": [g.gateway_id for g in c.gateways],
            }
            if c.onboard_day is not None:
                entry["contract_start_day"] = self.date_of(c.onboard_day).isoformat()
            if c.drop_day is not None:
                entry["drop_day"] = self.date_of(c.drop_day).isoformat()
            if c.offline_gateway is not None:
                entry["offline_gateway"] = c.offline_gateway
            if c.pattern == "expansion":
                entry["extra_devices"] = sum(1 for d in c.devices if d.extra)
            customers[c.customer_id] = entry
        return {
            "seed": self.seed,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
            "days": self.days,
            "firmware_versions": list(FIRMWARE_VERSIONS),
            "latest_firmware": LATEST_FIRMWARE,
            "patterns": patterns,
            "customers": customers,
            "firmware_spike": {
                "version": spike.version,
                "code": spike.code,
                "first_day": self.date_of(spike.first_day).isoformat(),
                "last_day": self.date_of(spike.last_day).isoformat(),
                "severities": ["error", "critical"],
            },
            "gateway_offline": [
                {
                    "customer_id": o.customer_id,
                    "gateway_id": o.gateway_id,
                    "first_day": self.date_of(o.first_day).isoformat(),
                    "last_day": self.date_of(o.last_day).isoformat(),
                }
                for o in self.outages
            ],
        }


# ------------------------------------------------------------------ building
def _segments(seed: int, n: int) -> list[str]:
    """Segments by quota (many SMB, few enterprise), in a seeded order."""
    n_ent = round(0.12 * n) if n < 5 else max(1, round(0.12 * n))
    n_mid = round(0.30 * n)
    segments = ["enterprise"] * n_ent + ["mid_market"] * n_mid
    segments += ["smb"] * (n - len(segments))
    derive_rng(seed, "segments").shuffle(segments)
    return segments


def _patterns(seed: int, segments: Sequence[str]) -> list[str]:
    """One pattern per account; every pattern appears once there are 7+ accounts.

    The outage goes to a multi-gateway (enterprise) account when there is one,
    so the demo shows one site going dark while the others keep reporting.
    """
    n = len(segments)
    rng = derive_rng(seed, "patterns")
    order = list(range(n))
    rng.shuffle(order)
    assigned: list[str | None] = [None] * n
    planted = list(_PLANT_ORDER)
    enterprise = [i for i in order if segments[i] == "enterprise"]
    if enterprise and n >= len(PATTERNS):
        assigned[enterprise[0]] = "gateway_offline"
        planted.remove("gateway_offline")
    free = [i for i in order if assigned[i] is None]
    for i, pattern in zip(free, planted, strict=False):
        assigned[i] = pattern
    rest = free[len(planted) :]
    # Quotas by largest remainder rather than independent draws, so that every
    # seed gets a believable mix (independent draws gave 7 expansions in 24).
    shares = {p: w * len(rest) for p, w in _REST_WEIGHTS.items()}
    counts = {p: int(s) for p, s in shares.items()}
    by_remainder = sorted(shares, key=lambda p: (counts[p] - shares[p], PATTERNS.index(p)))
    for p in by_remainder[: len(rest) - sum(counts.values())]:
        counts[p] += 1
    pool = [p for p in _REST_WEIGHTS for _ in range(counts[p])]
    rng.shuffle(pool)
    for i, pattern in zip(rest, pool, strict=True):
        assigned[i] = pattern
    return [p for p in assigned if p is not None]


def _company_name(rng: random.Random, taken: set[str], customer_id: str) -> str:
    for _ in range(20):
        name = f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)} {rng.choice(_NAME_SUFFIX)}"
        if name not in taken:
            return name
    return f"{rng.choice(_NAME_FIRST)} Holdings {customer_id}"


def _contract_dates(
    rng: random.Random, pattern: str, start: date, days: int
) -> tuple[date, date, int | None]:
    """(contract_start, next renewal_date, onboarding day index or None)."""
    end = start + timedelta(days=days - 1)
    if pattern in ONBOARDING_PATTERNS:
        # Early in the span so that the ramp (or the stall) is visible.
        onboard_day = rng.randint(min(1, days - 1), max(min(1, days - 1), days // 5))
        contract_start = start + timedelta(days=onboard_day)
        return contract_start, add_years(contract_start, 1), onboard_day
    if pattern in ("gradual_decline", "sudden_drop"):
        # At-risk accounts renew soon: the case where warning weeks ahead matters.
        renewal = end + timedelta(days=rng.randint(-5, 75))
        contract_start = add_years(renewal, -rng.randint(1, 3))
        return contract_start, renewal, None
    contract_start = start - timedelta(days=rng.randint(45, 1000))
    renewal = add_years(contract_start, 1)
    while renewal <= start:
        renewal = add_years(renewal, 1)
    return contract_start, renewal, None


def _account(
    seed: int, index: int, segment: str, pattern: str, start: date, days: int, taken: set[str]
) -> tuple[Account, int | None]:
    customer_id = f"c-{index:04d}"
    rng = derive_rng(seed, "account", customer_id)
    lo, hi = _ENTITLEMENT[segment]
    entitled = rng.randint(lo, hi)
    price_lo, price_hi = _PRICE_PER_DEVICE[segment]
    arr = round(entitled * rng.randint(price_lo, price_hi), -2)
    engagement = rng.choices(ENGAGEMENT_MODELS, _ENGAGEMENT_WEIGHTS[segment])[0]
    if engagement == "high_touch" or (engagement == "low_touch" and rng.random() < 0.5):
        csm = rng.choice(_CSMS)
    else:
        csm = ""
    contract_start, renewal, onboard_day = _contract_dates(rng, pattern, start, days)
    nps: int | None = None
    # Survey scores loosely follow how the account is doing, as they do in life.
    if rng.random() < 0.6:
        mean = {"gradual_decline": -5, "sudden_drop": 10, "stalled_onboarding": 0}.get(pattern, 35)
        nps = max(-100, min(100, round(rng.gauss(mean, 25))))
    name = _company_name(rng, taken, customer_id)
    taken.add(name)
    account = Account(
        customer_id=customer_id,
        name=name,
        segment=segment,
        engagement_model=engagement,
        arr_usd=int(arr),
        contract_start=contract_start,
        renewal_date=renewal,
        entitled_devices=entitled,
        csm_owner=csm or None,
        nps=nps,
    )
    return account, onboard_day


def _customer(
    seed: int, account: Account, pattern: str, onboard_day: int | None, days: int
) -> Customer:
    cid = account.customer_id
    rng = derive_rng(seed, "installed-base", cid)
    n_sites = rng.randint(2, 3) if account.segment == "enterprise" else 1
    site_ids = tuple(f"{cid}-s{i}" for i in range(1, n_sites + 1))
    gateway_ids = tuple(f"{cid}-gw{i}" for i in range(1, n_sites + 1))

    entitled = account.entitled_devices
    extra = 0
    if pattern == "expansion":
        extra = rng.randint(max(2, math.ceil(entitled * 0.3)), max(2, math.ceil(entitled * 0.5)))
    total = entitled + extra
    ranks = _even_ranks(rng, entitled) + _even_ranks(rng, extra) if extra else _even_ranks(rng, entitled)

    in_use = {
        "fast_onboarding": 0.93,
        "stalled_onboarding": 1.0,  # the few deployed devices are used; the rest never arrive
        "steady": rng.uniform(0.86, 0.95),
        "gradual_decline": 0.92,
        "sudden_drop": 0.90,
        "expansion": 0.97,
        "gateway_offline": rng.uniform(0.86, 0.95),
    }[pattern]
    breadth = {"stalled_onboarding": rng.randint(1, 2)}.get(pattern, rng.randint(4, 5))
    runtime_h = rng.uniform(1.5, 3.5) * (0.5 if pattern == "stalled_onboarding" else 1.0)
    runtime_h *= 1.2 if pattern == "expansion" else 1.0
    feature_order = list(FEATURES)
    rng.shuffle(feature_order)

    devices: list[Device] = []
    per_gateway: dict[str, list[str]] = {g: [] for g in gateway_ids}
    for i in range(total):
        is_extra = i >= entitled
        # Contiguous blocks per site for the entitled devices; extras land anywhere.
        g = rng.randrange(n_sites) if is_extra else i * n_sites // entitled
        gateway_id, site_id = gateway_ids[g], site_ids[g]
        device_id = f"{cid}-d{i + 1:03d}"
        rank = ranks[i]
        deploy_day: int | None = None
        # 0 for the first device of the entitlement: it goes live on the contract start.
        order = rank - 0.5 / entitled
        if pattern == "fast_onboarding" and onboard_day is not None:
            deploy_day = onboard_day + int(order * 12)
        elif pattern == "stalled_onboarding" and onboard_day is not None:
            # About a quarter of the entitlement ever arrives, all in the first days.
            deploy_day = onboard_day + int(order * 16) if rank < 0.25 else days
        elif is_extra:
            lo, hi = max(1, days // 10), max(1, days // 2)
            deploy_day = lo + int(rank * (hi - lo + 1))
        if deploy_day is not None and deploy_day >= days:
            deploy_day = days  # never within the span
        fw_roll = rng.random()
        if deploy_day is not None:
            initial_fw = "3.2.0" if fw_roll < 0.5 else LATEST_FIRMWARE
        else:
            initial_fw = "3.1.0" if fw_roll < 0.25 else ("3.2.0" if fw_roll < 0.75 else "3.2.1")
        upgrade_day: int | None = None
        if initial_fw != LATEST_FIRMWARE and rng.random() < 0.35:
            upgrade_day = rng.randrange(days)
        devices.append(
            Device(
                device_id=device_id,
                customer_id=cid,
                site_id=site_id,
                gateway_id=gateway_id,
                rank=rank,
                usage_factor=rng.uniform(0.6, 1.4),
                deploy_day=deploy_day,
                deploy_at_s=rng.randint(8 * 3600, 15 * 3600),
                initial_fw=initial_fw,
                upgrade_day=upgrade_day,
                upgrade_at_s=rng.randint(1 * 3600, 4 * 3600),
                extra=is_extra,
            )
        )
        per_gateway[gateway_id].append(device_id)

    gateways = tuple(
        Gateway(gid, cid, sid, tuple(per_gateway[gid]))
        for gid, sid in zip(gateway_ids, site_ids, strict=True)
    )
    drop_day = max(1, int(days * 0.7)) if pattern == "sudden_drop" else None
    offline_gateway = gateway_ids[-1] if pattern == "gateway_offline" else None
    return Customer(
        account=account,
        pattern=pattern,
        site_ids=site_ids,
        gateways=gateways,
        devices=tuple(devices),
        in_use_fraction=in_use,
        runtime_h=runtime_h,
        feature_order=tuple(feature_order),
        feature_breadth=breadth,
        onboard_day=onboard_day,
        drop_day=drop_day,
        offline_gateway=offline_gateway,
    )


def build_fleet(seed: int, customers: int, start_date: date, days: int) -> Fleet:
    """Build the simulated fleet; the same arguments always give the same fleet."""
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    segments = _segments(seed, customers)
    patterns = _patterns(seed, segments)
    taken: set[str] = set()
    built: list[Customer] = []
    for i, (segment, pattern) in enumerate(zip(segments, patterns, strict=True), start=1):
        account, onboard_day = _account(seed, i, segment, pattern, start_date, days, taken)
        built.append(_customer(seed, account, pattern, onboard_day, days))

    rng = derive_rng(seed, "fleet-events")
    spike_len = max(1, min(5, days // 12))
    spike_first = min(max(0, int(days * 0.4) + rng.randint(-2, 2)), max(0, days - spike_len))
    spike = FirmwareSpike(
        SPIKE_FIRMWARE, SPIKE_ERROR_CODE, spike_first, min(days - 1, spike_first + spike_len - 1)
    )
    outage_len = max(1, min(7, days // 8))
    outages = tuple(
        GatewayOutage(c.customer_id, c.offline_gateway, days - outage_len, days - 1)
        for c in built
        if c.offline_gateway is not None
    )
    return Fleet(
        seed=seed,
        start_date=start_date,
        days=days,
        customers=tuple(built),
        firmware_spike=spike,
        outages=outages,
    )
