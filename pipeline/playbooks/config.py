"""Playbooks as configuration: the YAML model CS Ops edit, validated once at load.

    from fleetpulse.pipeline.playbooks.config import load_playbooks
    book = load_playbooks("deploy/playbooks/lifecycle.yaml")

A playbooks file has ``channels`` (where messages can go), ``routing`` (which
channel an account's CSM uses, and the fallback for accounts without one),
``templates`` (named message texts), ``delivery`` (retries) and ``playbooks``
(a trigger, filters, episode rules and actions each). docs/PLAYBOOKS.md
documents every key; deploy/playbooks/lifecycle.yaml is a commented example.

Every problem raises :class:`~fleetpulse.errors.ConfigError` naming the file,
the key with the playbook's name in it (``playbooks[adoption-drop].trigger.drop_pct``)
and the fix. Loading does no I/O besides reading the file: secrets are named
here (``url_env: SLACK_CSM_URL``) and read from the environment only when a
channel is opened (:mod:`.channels`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.health.config import parse_yaml
from fleetpulse.pipeline.model import BANDS, SEVERITIES, STAGES
from fleetpulse.schemas.accounts import ENGAGEMENT_MODELS, SEGMENTS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CHANNEL_TYPES = ("slack", "webhook", "smtp", "mqtt", "file")
#: who an action speaks to: the account's CSM, a team channel, the customer, or Sales
ACTION_KINDS = ("notify_csm", "notify_team", "touch_customer", "csql")
#: episode events that can send an action
EVENTS = ("open", "renotify", "resolve")
DEFAULT_ON = {"notify_csm": ("open", "renotify"), "notify_team": ("open", "renotify"), "touch_customer": ("open",),
              "csql": ("open",)}
TRIGGER_TYPES = (
    "band", "usage_drop", "onboarding_stalled", "expansion", "renewal_risk", "gateway_offline",
    "time_to_value", "threshold",
)
#: DailySignal fields a ``threshold`` trigger may compare
THRESHOLD_SIGNALS = (
    "health", "adoption", "usage_per_active_device", "feature_breadth", "error_rate",
    "firmware_currency", "coverage", "trend_delta", "active_devices",
)
COVERAGE_HOLDS = ("low_coverage", "never")

#: every variable a template may use (see docs/PLAYBOOKS.md for what each holds)
TEMPLATE_VARS = frozenset({
    "customer_id", "account_name", "segment", "engagement_model", "stage", "csm_owner",
    "contact_email", "renewal_date", "days_to_renewal",
    "playbook", "playbook_title", "severity", "step", "event", "event_text",
    "day", "opened_day", "days_open", "episode_id",
    "what_changed", "health", "band", "trend", "trend_delta", "driver", "components",
    "coverage", "coverage_note", "adoption", "active_devices", "entitled_devices",
    "report_link", "explanation",
})


@dataclass(frozen=True)
class ChannelConfig:
    """One destination. Which keys matter depends on ``type`` (see docs/PLAYBOOKS.md)."""

    name: str
    type: str
    url_env: str | None = None  # slack, webhook
    secret_env: str | None = None  # webhook: HMAC-SHA256 signature of the body
    host: str | None = None  # smtp, mqtt
    port: int | None = None
    security: str = "starttls"  # smtp: starttls / ssl / none; mqtt: tls / none
    ca_file: str | None = None  # a private CA to verify the server with (verification stays on)
    username_env: str | None = None
    password_env: str | None = None
    sender: str | None = None  # smtp "from"
    to: tuple[str, ...] = ()  # smtp: fixed recipients (else the action's audience)
    topic: str | None = None  # mqtt: a template, e.g. fleetpulse/alerts/${customer_id}
    qos: int = 1
    path: str | None = None  # file
    timeout_ms: int = 10_000


@dataclass(frozen=True)
class Routing:
    """Where CSM-facing actions go: the account's csm_channel, else ``csm_channel``; no CSM: ``fallback_channel``."""

    csm_channel: str
    fallback_channel: str


@dataclass(frozen=True)
class MessageTemplate:
    subject: str
    text: str

    def render(self, variables: dict[str, str]) -> tuple[str, str]:
        return Template(self.subject).substitute(variables), Template(self.text).substitute(variables)


DEFAULT_TEMPLATE = MessageTemplate(
    subject="[FleetPulse] $event_text: $playbook_title - $account_name ($customer_id)",
    text="$explanation",
)


@dataclass(frozen=True)
class Trigger:
    """The condition; which numbers apply depends on ``type`` (unused ones keep their defaults)."""

    type: str
    for_days: int = 1  # the condition must hold this many evaluable days in a row to open
    coverage_hold: str = "low_coverage"
    bands: tuple[str, ...] = ("red",)  # band
    drop_pct: float = 40.0  # usage_drop
    window_days: int = 7  # usage_drop: the signals' trailing window
    baseline_days: int = 28  # usage_drop
    baseline_min_days: int = 7  # usage_drop
    after_days: int = 21  # onboarding_stalled: days since contract start
    adoption_below: float = 0.8  # onboarding_stalled
    adoption_above: float = 1.0  # expansion
    within_days: int = 90  # renewal_risk
    health_below: float = 60.0  # renewal_risk
    hours: float = 12.0  # gateway_offline: silent for more than this
    known_days: int = 14  # gateway_offline: gateways seen this recently are expected
    signal: str = "health"  # threshold
    below: float | None = None  # threshold
    above: float | None = None  # threshold


@dataclass(frozen=True)
class Filters:
    segments: tuple[str, ...] = ()  # empty = all
    stages: tuple[str, ...] = ()
    engagement_models: tuple[str, ...] = ()
    csm: str = "any"  # any / assigned / unassigned
    min_arr_usd: int = 0


@dataclass(frozen=True)
class Cap:
    max_notifications: int
    per_days: int


@dataclass(frozen=True)
class EpisodeRules:
    renotify_after_days: int | None = 7  # None: never re-notify while open
    resolve_after_days: int = 1  # clear this many evaluable days in a row to resolve
    cap: Cap | None = None


@dataclass(frozen=True)
class Action:
    name: str
    kind: str
    channel: str | None  # None: notify_csm routes by the registry and routing
    template: MessageTemplate
    on: tuple[str, ...]


@dataclass(frozen=True)
class Playbook:
    name: str
    title: str
    severity: str
    step: str
    trigger: Trigger
    filters: Filters
    episode: EpisodeRules
    actions: tuple[Action, ...]
    enabled: bool = True  # a disabled playbook is validated but not evaluated


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    backoff_initial_ms: int = 2_000
    backoff_max_ms: int = 600_000
    #: notifications about events older than this (days before the newest signal day)
    #: are recorded as stale instead of sent; None sends everything
    max_event_age_days: int | None = None


@dataclass(frozen=True)
class PlaybookSet:
    source: str
    channels: dict[str, ChannelConfig]
    routing: Routing
    playbooks: tuple[Playbook, ...]
    delivery: DeliveryPolicy = DeliveryPolicy()
    report_url: str | None = None
    templates: dict[str, MessageTemplate] = field(default_factory=dict)

    def playbook(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)


def load_playbooks(path: str | Path) -> PlaybookSet:
    """Read and validate a playbooks file; every error names the file, the key and the fix."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "file", f"cannot read the playbooks file ({exc.strerror})",
                          "pass the path of a playbooks YAML (see deploy/playbooks/lifecycle.yaml)") from None
    return parse_playbooks(text, source)


def parse_playbooks(text: str, source: str = "<playbooks>") -> PlaybookSet:
    return _Parser(source).document(parse_yaml(text, source))


class _Parser:
    """Walks the document; every complaint names the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.source, key, problem, fix)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key or "document", f"expected a mapping, got {type(value).__name__}",
                             "write key: value pairs here")
        prefix = f"{key}." if key else ""
        for name in value:
            if isinstance(name, bool):
                raise self.error(f"{prefix}{name}", f"a key reads as {name} (YAML takes on/off/yes/no for booleans)",
                                 f"use one of {', '.join(allowed)}")
            if not isinstance(name, str) or name not in allowed:
                raise self.error(f"{prefix}{name}", f"unknown key {name!r}",
                                 f"use one of {', '.join(allowed)} or remove it")
        for name in required:
            if value.get(name) is None:
                raise self.error(f"{prefix}{name}", "is missing", f"add {name} to {key or 'the file'}")
        return value

    def number(self, value: Any, key: str, low: float, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.error(key, f"{value!r} is not a number", "write a plain number")
        if value < low or (high is not None and value > high):
            raise self.error(key, f"{value!r} is out of range", f"use a value in [{low:g}, {high if high is not None else 'inf'}]")
        return float(value)

    def integer(self, value: Any, key: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"{value!r} is not a whole number", f"write an integer >= {low}")
        if value < low or (high is not None and value > high):
            raise self.error(key, f"{value} is out of range", f"use a whole number in [{low}, {high or 'inf'}]")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"{value!r} is not text", "write a non-empty string")
        return value

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise self.error(key, f"{value!r} is not a valid name", "use letters, digits and . _ - (at most 64)")
        return value

    def env(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
            raise self.error(key, f"{value!r} is not an environment variable name",
                             "name the variable that holds the secret, e.g. SLACK_CSM_URL")
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.error(key, f"{value!r} is not allowed", f"use one of {', '.join(allowed)}")
        return str(value)

    def choices(self, value: Any, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.error(key, f"{value!r} is not a list", f"write a list of {', '.join(allowed)}")
        return tuple(self.choice(v, f"{key}[{i}]", allowed) for i, v in enumerate(value))

    # ---- the document ------------------------------------------------------------

    def document(self, data: Any) -> PlaybookSet:
        top = self.mapping(data, "", ("version", "report_url", "channels", "routing", "templates",
                                      "delivery", "playbooks"), required=("channels", "routing", "playbooks"))
        if top.get("version", 1) != 1:
            raise self.error("version", f"version {top['version']!r} is not supported", "use version: 1")
        report_url = top.get("report_url")
        if report_url is not None:
            report_url = self.text(report_url, "report_url")
            if "#" in report_url:
                raise self.error("report_url", "has a #fragment", "give the report's address without #...; "
                                 "each alert adds the account's anchor")
        table = top["channels"]
        if not isinstance(table, dict) or not table:
            raise self.error("channels", "no channels are defined", "define at least one channel")
        channels = {self.name(n, f"channels.{n}"): self.channel(n, body) for n, body in table.items()}
        routing = self.routing(top["routing"], channels)
        templates = self.templates(top.get("templates", {}))
        raw = top["playbooks"]
        if not isinstance(raw, list) or not raw:
            raise self.error("playbooks", "expected a non-empty list", "write playbooks as a list of - name: ...")
        playbooks: list[Playbook] = []
        for i, body in enumerate(raw):
            playbook = self.playbook(i, body, channels, templates)
            if any(p.name == playbook.name for p in playbooks):
                raise self.error(f"playbooks[{playbook.name}].name", f"{playbook.name!r} appears twice",
                                 "give every playbook its own name (it keys the ledger)")
            playbooks.append(playbook)
        self.fixed_recipients(routing, playbooks, channels)
        return PlaybookSet(
            source=self.source, channels=channels, routing=routing, playbooks=tuple(playbooks),
            delivery=self.delivery(top.get("delivery", {})), report_url=report_url, templates=templates,
        )

    def channel(self, name: str, value: Any) -> ChannelConfig:
        key = f"channels.{name}"
        body = self.mapping(value, key, ("type", "url_env", "secret_env", "host", "port", "security", "ca_file",
                                         "username_env", "password_env", "from", "to", "topic", "qos", "path",
                                         "timeout_ms"), required=("type",))
        kind = self.choice(body["type"], f"{key}.type", CHANNEL_TYPES)
        allowed = {
            "slack": ("type", "url_env", "timeout_ms"),
            "webhook": ("type", "url_env", "secret_env", "timeout_ms"),
            "smtp": ("type", "host", "port", "security", "ca_file", "username_env", "password_env", "from",
                     "to", "timeout_ms"),
            "mqtt": ("type", "host", "port", "security", "ca_file", "username_env", "password_env", "topic",
                     "qos", "timeout_ms"),
            "file": ("type", "path"),
        }[kind]
        for k in body:
            if k not in allowed:
                raise self.error(f"{key}.{k}", f"a {kind} channel has no {k!r}", f"use {', '.join(allowed)}")
        # (there is no url: key on purpose: webhook URLs carry tokens, so they come from url_env)
        required = {"slack": ("url_env",), "webhook": ("url_env",), "smtp": ("host", "from"),
                    "mqtt": ("host", "topic"), "file": ("path",)}[kind]
        for k in required:
            if body.get(k) is None:
                raise self.error(f"{key}.{k}", "is missing", f"a {kind} channel needs {', '.join(required)}")
        if ("username_env" in body) != ("password_env" in body):
            raise self.error(f"{key}.password_env", "needs both username_env and password_env",
                             "name both variables, or neither for no login")
        security_default = {"smtp": "starttls", "mqtt": "none"}.get(kind, "none")
        security_choices = {"smtp": ("starttls", "ssl", "none"), "mqtt": ("tls", "none")}.get(kind, ("none",))
        default_port = {"smtp": {"starttls": 587, "ssl": 465, "none": 25}, "mqtt": {"tls": 8883, "none": 1883}}
        security = self.choice(body.get("security", security_default), f"{key}.security", security_choices)
        port = body.get("port")
        if port is None and kind in default_port:
            port = default_port[kind][security]
        to = body.get("to", [])
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not all(isinstance(t, str) and "@" in t for t in to):
            raise self.error(f"{key}.to", f"{to!r} is not a list of e-mail addresses",
                             "write to: [sales@vendor.example] or leave it out to address the action's audience")
        topic = body.get("topic")
        if topic is not None:
            self.template_text(topic, f"{key}.topic")
            if any(ch in Template(topic).safe_substitute({v: "x" for v in TEMPLATE_VARS}) for ch in "#+"):
                raise self.error(f"{key}.topic", f"{topic!r} has MQTT wildcards", "publish to a concrete topic")
        return ChannelConfig(
            name=name, type=kind,
            url_env=self.env(body["url_env"], f"{key}.url_env") if "url_env" in body else None,
            secret_env=self.env(body["secret_env"], f"{key}.secret_env") if "secret_env" in body else None,
            host=self.text(body["host"], f"{key}.host") if "host" in body else None,
            port=self.integer(port, f"{key}.port", 1, 65535) if port is not None else None,
            security=security,
            ca_file=self.text(body["ca_file"], f"{key}.ca_file") if "ca_file" in body else None,
            username_env=self.env(body["username_env"], f"{key}.username_env") if "username_env" in body else None,
            password_env=self.env(body["password_env"], f"{key}.password_env") if "password_env" in body else None,
            sender=self.text(body["from"], f"{key}.from") if "from" in body else None,
            to=tuple(to),
            topic=topic,
            qos=self.integer(body.get("qos", 1), f"{key}.qos", 0, 2),
            path=self.text(body["path"], f"{key}.path") if "path" in body else None,
            timeout_ms=self.integer(body.get("timeout_ms", 10_000), f"{key}.timeout_ms", 100, 300_000),
        )

    def routing(self, value: Any, channels: dict[str, ChannelConfig]) -> Routing:
        body = self.mapping(value, "routing", ("csm_channel", "fallback_channel"),
                            required=("csm_channel", "fallback_channel"))
        for k in ("csm_channel", "fallback_channel"):
            if body[k] not in channels:
                raise self.error(f"routing.{k}", f"{body[k]!r} is not a channel",
                                 f"name one of the channels: {', '.join(channels)}")
        return Routing(csm_channel=body["csm_channel"], fallback_channel=body["fallback_channel"])

    def fixed_recipients(self, routing: Routing, playbooks: list[Playbook],
                         channels: dict[str, ChannelConfig]) -> None:
        """E-mail channels that address a team (fallback, notify_team, csql) need their own ``to``."""
        def needs_to(name: str) -> bool:
            return channels[name].type == "smtp" and not channels[name].to

        if needs_to(routing.fallback_channel):
            raise self.error("routing.fallback_channel", f"e-mail channel {routing.fallback_channel!r} has no `to`",
                             "give that channel to: [team@...]: accounts without a CSM have no address of their own")
        for p in playbooks:
            for i, a in enumerate(p.actions):
                if a.kind in ("notify_team", "csql") and a.channel and needs_to(a.channel):
                    raise self.error(f"playbooks[{p.name}].actions[{i}].channel",
                                     f"e-mail channel {a.channel!r} has no `to`",
                                     f"give that channel to: [...] (a {a.kind} goes to a team, not to the account)")

    def template_text(self, value: Any, key: str) -> str:
        text = self.text(value, key)
        template = Template(text)
        if not template.is_valid():
            raise self.error(key, "has a $ that is not a variable", "write $$ for a dollar sign, ${name} for a variable")
        unknown = sorted(set(template.get_identifiers()) - TEMPLATE_VARS)
        if unknown:
            raise self.error(key, f"unknown template variable ${unknown[0]}",
                             f"use one of {', '.join(sorted(TEMPLATE_VARS))}")
        return text

    def message(self, value: Any, key: str) -> MessageTemplate:
        body = self.mapping(value, key, ("subject", "text"), required=("subject", "text"))
        return MessageTemplate(self.template_text(body["subject"], f"{key}.subject"),
                               self.template_text(body["text"], f"{key}.text"))

    def templates(self, value: Any) -> dict[str, MessageTemplate]:
        if not isinstance(value, dict):
            raise self.error("templates", "expected a mapping of name: {subject, text}", "write templates: {name: ...}")
        return {self.name(n, f"templates.{n}"): self.message(body, f"templates.{n}") for n, body in value.items()}

    def delivery(self, value: Any) -> DeliveryPolicy:
        body = self.mapping(value, "delivery", ("max_attempts", "backoff_initial_ms", "backoff_max_ms",
                                                "max_event_age_days"))
        d = DeliveryPolicy()
        initial = self.integer(body.get("backoff_initial_ms", d.backoff_initial_ms), "delivery.backoff_initial_ms", 1)
        most = self.integer(body.get("backoff_max_ms", d.backoff_max_ms), "delivery.backoff_max_ms", 1)
        if most < initial:
            raise self.error("delivery.backoff_max_ms", f"{most} is below backoff_initial_ms {initial}",
                             "make the cap at least the first delay")
        age = body.get("max_event_age_days")
        return DeliveryPolicy(
            max_attempts=self.integer(body.get("max_attempts", d.max_attempts), "delivery.max_attempts", 1, 1000),
            backoff_initial_ms=initial, backoff_max_ms=most,
            max_event_age_days=None if age is None else self.integer(age, "delivery.max_event_age_days", 0),
        )

    # ---- one playbook --------------------------------------------------------------

    def playbook(self, index: int, value: Any, channels: dict[str, ChannelConfig],
                 templates: dict[str, MessageTemplate]) -> Playbook:
        raw_name = value.get("name") if isinstance(value, dict) else None
        key = f"playbooks[{raw_name}]" if isinstance(raw_name, str) else f"playbooks[{index}]"
        body = self.mapping(value, key, ("name", "title", "description", "enabled", "severity", "step", "trigger",
                                         "filters", "episode", "actions"),
                            required=("name", "trigger", "step", "actions"))
        name = self.name(body["name"], f"{key}.name")
        if body.get("description") is not None:
            self.text(body["description"], f"{key}.description")
        if not isinstance(body.get("enabled", True), bool):
            raise self.error(f"{key}.enabled", f"{body['enabled']!r} is not true or false", "write true or false")
        actions_raw = body["actions"]
        if not isinstance(actions_raw, list) or not actions_raw:
            raise self.error(f"{key}.actions", "expected a non-empty list", "list at least one action")
        actions: list[Action] = []
        for i, raw in enumerate(actions_raw):
            action = self.action(f"{key}.actions[{i}]", i, raw, channels, templates)
            if any(a.name == action.name for a in actions):
                raise self.error(f"{key}.actions[{i}].name", f"{action.name!r} appears twice",
                                 "give each action of a playbook its own name")
            actions.append(action)
        playbook = Playbook(
            name=name,
            title=self.text(body.get("title", name), f"{key}.title"),
            severity=self.choice(body.get("severity", "warning"), f"{key}.severity", SEVERITIES),
            step=self.text(body["step"], f"{key}.step"),
            trigger=self.trigger(body["trigger"], f"{key}.trigger"),
            filters=self.filters(body.get("filters", {}), f"{key}.filters"),
            episode=self.episode(body.get("episode", {}), f"{key}.episode"),
            actions=tuple(actions),
            enabled=body.get("enabled", True),
        )
        return playbook

    def trigger(self, value: Any, key: str) -> Trigger:
        if not isinstance(value, dict) or "type" not in value:
            raise self.error(f"{key}.type", "is missing", f"give the trigger a type: {', '.join(TRIGGER_TYPES)}")
        kind = self.choice(value["type"], f"{key}.type", TRIGGER_TYPES)
        common = ("type", "for_days", "coverage_hold")
        own = {
            "band": ("bands",),
            "usage_drop": ("drop_pct", "window_days", "baseline_days", "baseline_min_days"),
            "onboarding_stalled": ("after_days", "adoption_below"),
            "expansion": ("adoption_above",),
            "renewal_risk": ("within_days", "health_below"),
            "gateway_offline": ("hours", "known_days"),
            "time_to_value": (),
            "threshold": ("signal", "below", "above"),
        }[kind]
        body = self.mapping(value, key, common + own)
        d = Trigger(type=kind)
        get = body.get
        # A silent gateway is what makes coverage low, so that trigger is never held by it.
        hold_default = "never" if kind == "gateway_offline" else "low_coverage"
        trigger = Trigger(
            type=kind,
            for_days=self.integer(get("for_days", 1), f"{key}.for_days", 1, 366),
            coverage_hold=self.choice(get("coverage_hold", hold_default), f"{key}.coverage_hold", COVERAGE_HOLDS),
            bands=self.choices(get("bands", list(d.bands)), f"{key}.bands", BANDS),
            drop_pct=self.number(get("drop_pct", d.drop_pct), f"{key}.drop_pct", 1, 100),
            window_days=self.integer(get("window_days", d.window_days), f"{key}.window_days", 1, 366),
            baseline_days=self.integer(get("baseline_days", d.baseline_days), f"{key}.baseline_days", 1, 3660),
            baseline_min_days=self.integer(get("baseline_min_days", d.baseline_min_days),
                                           f"{key}.baseline_min_days", 1, 3660),
            after_days=self.integer(get("after_days", d.after_days), f"{key}.after_days", 0, 3660),
            adoption_below=self.number(get("adoption_below", d.adoption_below), f"{key}.adoption_below", 0, 10),
            adoption_above=self.number(get("adoption_above", d.adoption_above), f"{key}.adoption_above", 0, 10),
            within_days=self.integer(get("within_days", d.within_days), f"{key}.within_days", 0, 3660),
            health_below=self.number(get("health_below", d.health_below), f"{key}.health_below", 0, 100),
            hours=self.number(get("hours", d.hours), f"{key}.hours", 1, 24 * 366),
            known_days=self.integer(get("known_days", d.known_days), f"{key}.known_days", 1, 366),
            signal=self.choice(get("signal", d.signal), f"{key}.signal", THRESHOLD_SIGNALS),
            below=self.number(get("below"), f"{key}.below", -1e12) if get("below") is not None else None,
            above=self.number(get("above"), f"{key}.above", -1e12) if get("above") is not None else None,
        )
        if trigger.baseline_min_days > trigger.baseline_days:
            raise self.error(f"{key}.baseline_min_days", f"{trigger.baseline_min_days} is longer than baseline_days "
                             f"{trigger.baseline_days}", "make baseline_min_days at most baseline_days")
        if kind == "threshold" and (trigger.below is None) == (trigger.above is None):
            raise self.error(f"{key}.below", "a threshold trigger needs exactly one of below or above",
                             "write below: X (met when the signal is under X) or above: X")
        return trigger

    def filters(self, value: Any, key: str) -> Filters:
        body = self.mapping(value, key, ("segments", "stages", "engagement_models", "csm", "min_arr_usd"))
        return Filters(
            segments=self.choices(body["segments"], f"{key}.segments", (*SEGMENTS, "unknown"))
            if "segments" in body else (),
            stages=self.choices(body["stages"], f"{key}.stages", STAGES) if "stages" in body else (),
            engagement_models=self.choices(body["engagement_models"], f"{key}.engagement_models", ENGAGEMENT_MODELS)
            if "engagement_models" in body else (),
            csm=self.choice(body.get("csm", "any"), f"{key}.csm", ("any", "assigned", "unassigned")),
            min_arr_usd=self.integer(body.get("min_arr_usd", 0), f"{key}.min_arr_usd", 0),
        )

    def episode(self, value: Any, key: str) -> EpisodeRules:
        body = self.mapping(value, key, ("renotify_after_days", "resolve_after_days", "cap"))
        renotify = body.get("renotify_after_days", 7)
        cap = None
        if body.get("cap") is not None:
            c = self.mapping(body["cap"], f"{key}.cap", ("max", "per_days"), required=("max", "per_days"))
            cap = Cap(self.integer(c["max"], f"{key}.cap.max", 1), self.integer(c["per_days"], f"{key}.cap.per_days", 1))
        return EpisodeRules(
            renotify_after_days=None if renotify is None else self.integer(renotify, f"{key}.renotify_after_days", 1),
            resolve_after_days=self.integer(body.get("resolve_after_days", 1), f"{key}.resolve_after_days", 1, 366),
            cap=cap,
        )

    def action(self, key: str, index: int, value: Any, channels: dict[str, ChannelConfig],
               templates: dict[str, MessageTemplate]) -> Action:
        body = self.mapping(value, key, ("name", "kind", "channel", "template", "send_on"), required=("kind",))
        kind = self.choice(body["kind"], f"{key}.kind", ACTION_KINDS)
        channel = body.get("channel")
        if channel is None and kind != "notify_csm":
            raise self.error(f"{key}.channel", "is missing",
                             f"a {kind} action names its channel (only notify_csm routes by the accounts registry)")
        if channel is not None and channel not in channels:
            raise self.error(f"{key}.channel", f"{channel!r} is not a channel",
                             f"name one of the channels: {', '.join(channels)}")
        raw = body.get("template")
        if raw is None:
            template = DEFAULT_TEMPLATE
        elif isinstance(raw, str):
            if raw not in templates:
                raise self.error(f"{key}.template", f"{raw!r} is not a template",
                                 f"name one of the templates ({', '.join(templates) or 'none defined'}) "
                                 "or write {subject: ..., text: ...} here")
            template = templates[raw]
        else:
            template = self.message(raw, f"{key}.template")
        on = self.choices(body.get("send_on", list(DEFAULT_ON[kind])), f"{key}.send_on", EVENTS)
        return Action(
            name=self.name(body.get("name", f"{kind}-{index}"), f"{key}.name"),
            kind=kind, channel=channel, template=template, on=tuple(dict.fromkeys(on)),
        )
