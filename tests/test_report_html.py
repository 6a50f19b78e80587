"""The self-contained HTML report, on literal signals and alerts; and its command line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleetpulse.cli import main
from fleetpulse.pipeline.model import STAGES, Alert, Component, DailySignal
from fleetpulse.pipeline.outputs import tables as outputs
from fleetpulse.pipeline.report.html import anchor_id, render_html

GENERATED = datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
CHROMIUM = Path("/usr/bin/chromium")


def day(offset: int) -> str:
    return (date(2024, 3, 1) + timedelta(days=offset)).isoformat()


def signal(customer: str, offset: int, health: float, band: str, **changes: object) -> DailySignal:
    components = (
        Component("adoption", 0.5, 62.5, 0.25, 15.62, "2 of 4 entitled devices active in the last 7 days (50%)"),
        Component("engagement", 0.9, 80.0, 0.35, 28.0, "3,240 runtime_s per active device per day, 90% of baseline"),
        Component("reliability", 0.3, 40.0, 0.40, 16.0, "9 error records over 30 active device-days"),
        Component("nps", None, 0.0, 0.0, 0.0, "not measurable: no NPS answer in the CRM"),
    )
    base = DailySignal(
        customer_id=customer, day=day(offset), segment="mid_market", csm_owner="jane", entitled_devices=4,
        known_devices=4, active_devices=2, adoption=0.5, usage_per_active_device=3240.0, feature_breadth=1.0,
        error_rate=0.3, firmware_currency=1.0, coverage=0.98, low_coverage=False, health=health, band=band,
        previous_health=None, trend_delta=None, trend="new", stage="adopting", driver="adoption",
        components=components,
    )
    return dataclasses.replace(base, **changes)


def portfolio() -> tuple[list[DailySignal], list[Alert]]:
    """Three customers over three days; the CRM gave one a name with markup in it."""
    signals = [
        signal("good", 0, 88.0, "green", stage="mature"),
        signal("good", 1, 90.0, "green", stage="mature"),
        signal("good", 2, 91.0, "green", stage="mature", trend="up", trend_delta=3.0, previous_health=88.0),
        signal("bad", 0, 62.0, "yellow"),
        signal("bad", 1, 30.0, "red", coverage=0.2, low_coverage=True, stage="at_risk"),
        signal("bad", 2, 40.2, "red", stage="at_risk", trend="down", trend_delta=-21.8, previous_health=62.0),
        signal("Acme <b>&</b> Co", 1, 55.0, "yellow", segment="smb \"core\""),
        signal("Acme <b>&</b> Co", 2, 60.0, "yellow", segment="smb \"core\"", stage="onboarding"),
    ]
    alerts = [
        Alert(customer_id="bad", day=day(1), kind="band_worsened", severity="critical",
              title="Health fell into red", explanation="Driver: adoption <script>alert(1)</script> fell & stayed",
              health=30.0, band="red", driver="adoption", coverage=0.2),
        Alert(customer_id="bad", day=day(2), kind="usage_drop", severity="warning", title="Usage dropped 45%",
              explanation="Usage per day fell 45% below the 28-day baseline.", health=40.2, band="red",
              driver="adoption", coverage=0.98),
    ]
    return signals, alerts


class Outline(HTMLParser):
    """What the tests look at: element counts, ids, link targets, table rows and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.row_heads: list[str] = []  # text of each <tbody><tr><th> in the portfolio table
        self.svg_titles: list[str] = []
        self.html_lang: str | None = None
        self.title = ""
        self._in_portfolio = False
        self._row_head: list[str] | None = None
        self._svg_title: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        self.open.append(tag)
        if values.get("id"):
            self.ids.append(str(values["id"]))
        if values.get("href"):
            self.hrefs.append(str(values["href"]))
        if tag == "html":
            self.html_lang = values.get("lang")
        if tag == "table" and values.get("class") == "portfolio":
            self._in_portfolio = True
        if tag == "th" and self._in_portfolio and "tbody" in self.open:
            self._row_head = []
        if tag == "title" and self.open[-2:-1] == ["svg"]:  # the chart's own title, not a mark's tooltip
            self._svg_title = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open.pop() != tag:
                pass
        if tag == "table":
            self._in_portfolio = False
        if tag == "th" and self._row_head is not None:
            self.row_heads.append("".join(self._row_head))
            self._row_head = None
        if tag == "title" and self._svg_title is not None:
            self.svg_titles.append("".join(self._svg_title))
            self._svg_title = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._row_head is not None:
            self._row_head.append(data)
        if self._svg_title is not None:
            self._svg_title.append(data)
        if self.open and self.open[-1] == "title" and "svg" not in self.open:
            self.title += data


def outline(page: str) -> Outline:
    parsed = Outline()
    parsed.feed(page)
    parsed.close()
    return parsed


def test_page_parses_with_title_lang_and_every_part() -> None:
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="EMEA <health>", generated_at=GENERATED)
    parsed = outline(page)
    assert page.startswith("<!DOCTYPE html>")
    assert parsed.title == "EMEA <health>" and "EMEA &lt;health&gt;" in page
    assert parsed.html_lang == "en"
    assert parsed.open == [], f"unclosed elements: {parsed.open}"
    text = " ".join(parsed.text)
    assert "2024-03-01 to 2024-03-03" in text and "2024-03-05 09:30 UTC" in text
    # one chart per portfolio view, two per account, each with its own <title>
    assert parsed.tags.count("svg") == 3 + 2 * 3
    assert len(parsed.svg_titles) == parsed.tags.count("svg")
    assert "Customers per health band over time" in parsed.svg_titles
    assert "Health of bad over time" in parsed.svg_titles
    assert "Heartbeat coverage of bad over time" in parsed.svg_titles
    assert parsed.tags.count("style") == 1 and "script" not in parsed.tags


def test_portfolio_table_is_worst_first_and_links_to_each_account() -> None:
    signals, alerts = portfolio()
    parsed = outline(render_html(signals, alerts, title="t", generated_at=GENERATED))
    assert parsed.row_heads == ["bad", "Acme <b>&</b> Co", "good"]
    for customer in ("bad", "Acme <b>&</b> Co", "good"):
        assert f"#{anchor_id(customer)}" in parsed.hrefs
        assert anchor_id(customer) in parsed.ids
    assert len(set(parsed.ids)) == len(parsed.ids), "anchors must be unique"
    assert anchor_id("a b") != anchor_id("a-b") and anchor_id("c-0007") == "acct-c-0007"


def test_row_shows_band_trend_coverage_and_driver_detail() -> None:
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="t", generated_at=GENERATED)
    table = page.split('class="portfolio"', 1)[1].split("</table>", 1)[0]
    bad_row = next(row for row in table.split("<tr>") if f'href="#{anchor_id("bad")}"' in row)
    assert "40.2" in bad_row and "band-red" in bad_row and "\u2193 -21.8" in bad_row
    assert "at_risk" in bad_row and "50%" in bad_row
    assert "2 of 4 entitled devices active" in bad_row
    good_row = next(row for row in table.split("<tr>") if f'href="#{anchor_id("good")}"' in row)
    assert "\u2191 +3.0" in good_row and "band-green" in good_row


def test_account_section_has_components_low_coverage_and_alerts() -> None:
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="t", generated_at=GENERATED)
    bad = page.split(f'id="{anchor_id("bad")}"', 1)[1].split("</section>", 1)[0]
    assert "1 low-coverage day" in bad and "time to value not reached yet" in bad
    assert "2024-03-02: coverage 20% LOW" in bad  # the marked bar's tooltip
    assert "2024-03-02: health 30.0 (red), low coverage" in bad
    assert bad.count("2024-03-02: low coverage (20% of expected heartbeats)") == 2  # a column in each chart
    for header in ("component", "weight", "score", "points", "detail"):
        assert f">{header}</th>" in bad
    assert "9 error records over 30 active device-days" in bad and "40.0%" in bad  # reliability's weight
    assert bad.index("Usage dropped 45%") < bad.index("Health fell into red")  # newest first
    good = page.split(f'id="{anchor_id("good")}"', 1)[1].split("</section>", 1)[0]
    assert "No alerts raised." in good


def test_data_text_is_escaped_and_page_is_self_contained() -> None:
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="t", generated_at=GENERATED)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; fell &amp; stayed" in page
    assert "<b>" not in page and "Acme &lt;b&gt;&amp;&lt;/b&gt; Co" in page
    assert "smb &quot;core&quot;" in page
    for reference in ("http://", "https://", "src=", "@import", "url("):
        assert reference not in page


def test_funnel_counts_stages_of_the_latest_day_in_lifecycle_order() -> None:
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="t", generated_at=GENERATED)
    funnel = next(part for part in page.split("<svg")[1:] if "Lifecycle funnel" in part)
    positions = [funnel.index(f">{stage}</text>") for stage in STAGES]
    assert positions == sorted(positions)
    assert "<title>onboarding: 1</title>" in funnel and "<title>at_risk: 1</title>" in funnel
    assert "<title>mature: 1</title>" in funnel and "<title>adopting: 0</title>" in funnel
    bands = next(part for part in page.split("<svg")[1:] if "per health band" in part)
    assert "2024-03-02: green 1, yellow 1, red 1" in bands


def test_coverage_distribution_stacks_low_coverage_customers() -> None:
    signals, alerts = portfolio()
    signals.append(signal("bad", 3, 35.0, "red", coverage=0.72, low_coverage=True))  # a gateway went silent
    page = render_html(signals, alerts, title="t", generated_at=GENERATED)
    chart = next(part for part in page.split("<svg")[1:] if "Distribution of heartbeat coverage" in part)
    assert "coverage 70\u201380%: 1 customers, 1 low coverage" in chart
    assert "coverage 90\u2013100%: 2 customers, 0 low coverage" in chart
    assert "coverage 0\u201310%: 0 customers, 0 low coverage" not in chart  # empty bins draw nothing


def test_same_input_gives_the_same_bytes_whatever_the_order() -> None:
    signals, alerts = portfolio()
    first = render_html(signals, alerts, title="t", generated_at=GENERATED)
    again = render_html(list(reversed(signals)), list(reversed(alerts)), title="t", generated_at=GENERATED)
    assert first.encode() == again.encode()
    later = render_html(signals, alerts, title="t", generated_at=GENERATED + timedelta(hours=1))
    assert later != first


def test_retention_section_only_when_given_and_tolerant_of_missing_keys() -> None:
    signals, alerts = portfolio()
    without = render_html(signals, alerts, title="t", generated_at=GENERATED)
    assert 'id="retention"' not in without
    retention = {  # the shape `fleetpulse retention --json` writes (RetentionReport.as_dict)
        "quantity": "runtime_s",
        "base": {"from": "2026-08-01", "to": "2026-08-31"},
        "compare": {"from": "2026-09-01", "to": "2026-09-29"},
        "retention": [
            {"dimension": "cohort", "group": "2024Q1", "accounts": 5, "base_active": 5,
             "nrr": 1.03, "grr": 0.91, "logo_retention": 1.0},
            {"dimension": "segment", "group": "<smb>", "accounts": 2, "base_active": 2, "nrr": None},
            "not a row",
        ],
        "csm_coverage": [{"segment": "smb", "coverage": "with_csm", "accounts": 3}],
    }
    page = render_html(signals, alerts, title="t", generated_at=GENERATED, retention=retention)
    section = page.split('id="retention"', 1)[1].split('id="accounts"', 1)[0]
    cohort = section.split("<th scope=row>2024Q1", 1)[1].split("</tr>", 1)[0]
    assert ">103%<" in cohort and ">91%<" in cohort and ">100%<" in cohort
    assert "&lt;smb&gt;" in section and "Retention by segment" in section
    assert "2026-08-01..2026-08-31" in section
    assert "CSM coverage" in section and ">with_csm<" in section
    assert outline(page).open == []


def test_report_reads_what_fleetpulse_retention_writes(tmp_path: Path) -> None:
    """The report and the retention command agree on the file: written by the real code."""
    from datetime import date

    import pyarrow as pa

    from fleetpulse.pipeline.analytics.retention import compute_retention
    from fleetpulse.pipeline.analytics.usage import Period
    from fleetpulse.schemas.accounts import Account

    acme = Account("acme", "Acme", "smb", "digital", 1000, date(2024, 1, 2), date(2027, 1, 1), 4, None, None)
    usage = pa.table({"customer_id": ["acme"], "usage": [100.0], "active_devices": [3]})
    later = pa.table({"customer_id": ["acme"], "usage": [80.0], "active_devices": [3]})
    report = compute_retention({"acme": acme}, usage, later, Period.parse("2026-08-01:2026-08-10"),
                               Period.parse("2026-09-01:2026-09-10"), quantity="runtime_s")
    path = tmp_path / "retention.json"
    path.write_text(json.dumps(report.as_dict()), "utf-8")
    signals, alerts = portfolio()
    page = render_html(signals, alerts, title="t", generated_at=GENERATED,
                       retention=json.loads(path.read_text("utf-8")))
    section = page.split('id="retention"', 1)[1].split('id="accounts"', 1)[0]
    assert "Retention by cohort" in section and "2024Q1" in section and ">80%<" in section
    assert "<svg" in section and "2024Q1: net 80%, gross 80%" in section  # the cohort chart


def test_no_signals_still_renders_a_page() -> None:
    parsed = outline(render_html([], [], title="empty", generated_at=GENERATED))
    assert parsed.title == "empty" and "No signals to report." in " ".join(parsed.text)
    assert "svg" not in parsed.tags


def write_batch_folder(folder: Path) -> None:
    """The layout `fleetpulse backfill --out` writes, through its own writers' row format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    signals, alerts = portfolio()
    (folder / "signals").mkdir(parents=True)
    rows = [outputs.signal_row(s) for s in signals]
    pq.write_table(pa.Table.from_pylist(rows, schema=outputs.SIGNAL_SCHEMA), folder / "signals" / "part-0.parquet")
    (folder / "alerts.jsonl").write_text("".join(outputs.alert_json(a) + "\n" for a in alerts), "utf-8")


def test_cli_writes_index_html_and_prints_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_batch_folder(tmp_path / "batch")
    retention = tmp_path / "retention.json"
    retention.write_text(json.dumps({"retention": [{"dimension": "cohort", "group": "2024Q1", "nrr": 1.1}]}), "utf-8")
    out = tmp_path / "site"
    code = main(["report", "--out", str(out), "--signals", str(tmp_path / "batch"), "--title", "Q1 <review>",
                 "--retention", str(retention)])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    parsed = outline((out / "index.html").read_text("utf-8"))
    assert parsed.title == "Q1 <review>"
    assert parsed.row_heads == ["bad", "Acme <b>&</b> Co", "good"]
    assert "retention" in parsed.ids and "Usage dropped 45%" in parsed.text
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]


def test_cli_reads_and_writes_the_out_folder_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_batch_folder(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "index.html")


@pytest.mark.parametrize("given", ["--signals", "--out"])
def test_cli_without_signals_exits_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str,
) -> None:
    argv = ["report", "--out", str(tmp_path / "site")]
    if given == "--signals":
        argv += ["--signals", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"fleetpulse report: command line: {given}: no signals under")
    assert "fix:" in err
    assert not (tmp_path / "site" / "index.html").exists()


def test_cli_bad_retention_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_batch_folder(tmp_path / "batch")
    bad = tmp_path / "retention.json"
    bad.write_text("{not json", "utf-8")
    argv = ["report", "--out", str(tmp_path / "site"), "--signals", str(tmp_path / "batch")]
    assert main(argv + ["--retention", str(bad)]) == 2
    assert main(argv + ["--retention", str(tmp_path / "missing.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(": --retention: " in line for line in lines)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")
def test_chromium_renders_the_report(tmp_path: Path) -> None:
    write_batch_folder(tmp_path / "batch")
    out = tmp_path / "site"
    assert main(["report", "--out", str(out), "--signals", str(tmp_path / "batch")]) == 0
    png = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,2000",
         (out / "index.html").as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_report_module_imports_nothing_heavy_at_top() -> None:
    code = ("import sys, fleetpulse.pipeline.cli.report as m; "
            "heavy = [n for n in ('pyarrow', 'apache_beam', 'yaml') if n in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
