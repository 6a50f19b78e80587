"""Playbook files: the sample loads, and every mistake names the file, the playbook and the key."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.playbooks.config import DEFAULT_TEMPLATE, load_playbooks, parse_playbooks
from fleetpulse.schemas.accounts import COLUMNS, load_accounts

from .test_playbooks_support import HEADER, book, one

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "deploy" / "playbooks" / "lifecycle.yaml"


def test_the_sample_lifecycle_set_loads_and_covers_the_lifecycle() -> None:
    sample = load_playbooks(SAMPLE)
    names = {p.name for p in sample.playbooks}
    assert {"onboarding-stalled", "adoption-drop", "health-red", "gateway-offline", "expansion-csql",
            "renewal-risk"} <= names
    assert {p.trigger.type for p in sample.playbooks} >= {
        "onboarding_stalled", "usage_drop", "band", "gateway_offline", "expansion", "renewal_risk"}
    kinds = {a.kind for p in sample.playbooks for a in p.actions}
    assert kinds >= {"notify_csm", "touch_customer", "csql"}
    assert {c.type for c in sample.channels.values()} >= {"slack", "webhook", "smtp", "mqtt"}
    # secrets are named, never written
    text = SAMPLE.read_text()
    assert "hooks.slack.com" not in text and "password:" not in text


def test_defaults_of_a_minimal_playbook() -> None:
    pb = one("{type: band}").playbooks[0]
    assert pb.trigger.bands == ("red",) and pb.trigger.for_days == 1 and pb.trigger.coverage_hold == "low_coverage"
    assert pb.episode.renotify_after_days == 7 and pb.episode.resolve_after_days == 1 and pb.episode.cap is None
    assert pb.actions[0].on == ("open", "renotify") and pb.actions[0].template == DEFAULT_TEMPLATE
    assert pb.severity == "warning" and pb.enabled
    assert one("{type: gateway_offline}").playbooks[0].trigger.coverage_hold == "never"


@pytest.mark.parametrize(
    ("trigger", "episode", "actions", "key", "words"),
    [
        ("{type: usage_drop, drop_pct: 0}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.drop_pct", "out of range"),
        ("{type: usage_drop, for_days: two}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.for_days", "not a whole number"),
        ("{type: band, bands: [purple]}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.bands[0]", "'purple'"),
        ("{type: bandd}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.type", "'bandd'"),
        ("{type: band, drop_pct: 40}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.drop_pct", "unknown key"),
        ("{type: threshold, signal: health}", "{}", "[{kind: notify_csm}]", "playbooks[pb].trigger.below", "exactly one"),
        ("{type: band}", "{cap: {max: 0, per_days: 7}}", "[{kind: notify_csm}]", "playbooks[pb].episode.cap.max", "out of range"),
        ("{type: band}", "{cooldown: 3}", "[{kind: notify_csm}]", "playbooks[pb].episode.cooldown", "unknown key"),
        ("{type: band}", "{}", "[{kind: csql}]", "playbooks[pb].actions[0].channel", "is missing"),
        ("{type: band}", "{}", "[{kind: csql, channel: crm}]", "playbooks[pb].actions[0].channel", "'crm' is not a channel"),
        ("{type: band}", "{}", "[{kind: notify_csm, template: nope}]", "playbooks[pb].actions[0].template", "'nope'"),
        ("{type: band}", "{}", "[{kind: notify_csm, template: {subject: 'Hi $name', text: x}}]",
         "playbooks[pb].actions[0].template.subject", "$name"),
        ("{type: band}", "{}", "[{kind: notify_csm, send_on: [opened]}]", "playbooks[pb].actions[0].send_on[0]", "'opened'"),
        ("{type: band}", "{}", "[{kind: notify_csm, on: [open]}]", "playbooks[pb].actions[0].True", "YAML"),
        ("{type: band}", "{}", "[]", "playbooks[pb].actions", "non-empty"),
    ],
)
def test_errors_name_the_file_the_playbook_and_the_key(trigger: str, episode: str, actions: str, key: str,
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        one(trigger, episode, actions)
    err = caught.value
    assert (err.source, err.key) == ("test.yaml", key), str(err)
    assert words in err.problem and err.fix
    assert str(err).startswith(f"test.yaml: {key}: ")


def test_a_playbook_without_a_name_is_named_by_its_position() -> None:
    with pytest.raises(ConfigError) as caught:
        book("- {title: x, step: y, trigger: {type: band}, actions: [{kind: notify_csm}]}")
    assert caught.value.key == "playbooks[0].name"


def test_duplicate_playbook_names_are_refused() -> None:
    twice = """
    - {name: a, step: s, trigger: {type: band}, actions: [{kind: notify_csm}]}
    - {name: a, step: s, trigger: {type: band}, actions: [{kind: notify_csm}]}
    """
    with pytest.raises(ConfigError, match=r"playbooks\[a\]\.name: 'a' appears twice"):
        book(twice)


@pytest.mark.parametrize(
    ("header_change", "key"),
    [
        (("fallback_channel: pool", "fallback_channel: nowhere"), "routing.fallback_channel"),
        (("csm-mail: {type: file, path: csm.jsonl}", "csm-mail: {type: slack, url: 'https://x'}"), "channels.csm-mail.url"),
        (("csm-mail: {type: file, path: csm.jsonl}", "csm-mail: {type: slack}"), "channels.csm-mail.url_env"),
        (("csm-mail: {type: file, path: csm.jsonl}", "csm-mail: {type: smtp, host: h, from: a@b.c, security: tls}"),
         "channels.csm-mail.security"),
        (("csm-mail: {type: file, path: csm.jsonl}", "csm-mail: {type: smtp, host: h, from: a@b.c, password_env: P}"),
         "channels.csm-mail.password_env"),
        (("csm-mail: {type: file, path: csm.jsonl}", "csm-mail: {type: mqtt, host: h, topic: 'a/#'}"),
         "channels.csm-mail.topic"),
        (("report_url: https://cs.example/report/index.html", "report_url: https://cs.example/r#x"), "report_url"),
        (("pool: {type: file, path: pool.jsonl}", "pool: {type: smtp, host: h, from: a@b.c}"),
         "routing.fallback_channel"),
    ],
)
def test_channel_and_routing_errors_name_the_key(header_change: tuple[str, str], key: str) -> None:
    header = HEADER.replace(*header_change)
    assert header != HEADER
    with pytest.raises(ConfigError) as caught:
        book("- {name: a, step: s, trigger: {type: band}, actions: [{kind: notify_csm}]}", header=header)
    assert caught.value.key == key, str(caught.value)


def test_invalid_yaml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("playbooks: [\n  - name: a\n")
    with pytest.raises(ConfigError) as caught:
        load_playbooks(bad)
    assert caught.value.source == str(bad) and caught.value.key.startswith("line ")
    with pytest.raises(ConfigError, match="cannot read"):
        load_playbooks(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="version"):
        parse_playbooks("version: 2\nchannels: {}\nrouting: {}\nplaybooks: []\n", "v.yaml")


def test_the_accounts_registry_takes_the_optional_routing_columns(tmp_path: Path) -> None:
    path = tmp_path / "accounts.csv"
    rows = [
        ["c1", "One", "smb", "digital", "100", "2025-01-01", "2026-01-01", "3", "", "", "", "it@one.example"],
        ["c2", "Two", "smb", "digital", "100", "2025-01-01", "2026-01-01", "3", "a@v.example", "", "csm-chat", ""],
    ]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([list(COLUMNS), *rows])
    accounts = load_accounts(path)
    assert accounts["c1"].contact_email == "it@one.example" and accounts["c1"].csm_channel is None
    assert accounts["c2"].csm_channel == "csm-chat" and accounts["c2"].contact_email is None
    # an export without the new columns still loads
    old = tmp_path / "old.csv"
    old.write_text("customer_id,segment,engagement_model,arr_usd,contract_start,renewal_date,entitled_devices\n"
                   "c1,smb,digital,1,2025-01-01,2026-01-01,1\n")
    assert load_accounts(old)["c1"].contact_email is None
    broken = tmp_path / "broken.csv"
    with broken.open("w", newline="") as handle:
        csv.writer(handle).writerows([list(COLUMNS), [*rows[0][:-1], "not-an-address"]])
    with pytest.raises(ConfigError) as caught:
        load_accounts(broken)
    assert caught.value.key == "row 2.contact_email"


def test_a_csql_to_an_email_channel_needs_a_fixed_recipient() -> None:
    header = HEADER.replace("sales: {type: file, path: sales.jsonl}", "sales: {type: smtp, host: h, from: a@b.c}")
    with pytest.raises(ConfigError) as caught:
        book("- {name: lead, step: s, trigger: {type: expansion}, actions: [{kind: csql, channel: sales}]}",
             header=header)
    assert caught.value.key == "playbooks[lead].actions[0].channel" and "to" in caught.value.fix
