"""deploy/influxdb and deploy/grafana: the setup statements and the dashboards' queries are real.

Run: /tmp/venv/bin/pytest tests/test_influx_deploy.py
The unit test checks that every dashboard parses and names only measurements,
tags and fields of the measurement design; the integration tests run the
InfluxDB 1.x setup statements from deploy/influxdb/README.md and every
dashboard query against Debian's influxd 1.6 holding points written by the
sink.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetpulse.pipeline.outputs.influx import InfluxConfig, open_sink
from fleetpulse.pipeline.outputs.points import gateway_status_point
from fleetpulse.schemas.influx import load_influx_design

from .servers import Server
from .test_influx_sink import customer_point, fleet_points

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
DESIGN_JSON = json.loads((ROOT / "schemas/influx_v1.json").read_text())


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [v["query"] for v in dashboard["templating"]["list"]]
    for panel in dashboard["panels"]:
        found += [t["query"] for t in panel.get("targets", [])]
    return found


def allowed_names(measurement: str) -> tuple[set[str], list[str]]:
    spec = DESIGN_JSON["measurements"][measurement]
    patterns = [p["pattern"] for p in spec.get("field_patterns", [])]
    return set(spec["tags"]) | set(spec["fields"]), patterns


def test_dashboards_parse_and_use_only_designed_measurements_tags_and_fields() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "account-drilldown.json",
        "fleet-operations.json",
        "portfolio-health.json",
    ]
    design = load_influx_design(1)
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        for query in queries(dashboard):
            [measurement] = re.findall(r'FROM "(\w+)"', query)
            assert measurement in DESIGN_JSON["measurements"], (path.name, query)
            names, patterns = allowed_names(measurement)
            # Quoted identifiers minus output aliases (`AS "x"`).
            aliases = set(re.findall(r'AS "(\w+)"', query))
            for name in set(re.findall(r'(?<!AS )"(\w+)"', query)) - aliases - {measurement}:
                assert name in names, (path.name, name, query)
            for regex in re.findall(r"/(\^c_[^/]*\$)/", query):
                # A component regex must select the designed c_<component>_* fields.
                assert re.fullmatch(regex, "c_adoption_score") or re.fullmatch(
                    regex, "c_adoption_contribution"
                ), regex
                assert any(p.startswith("^c_") for p in patterns)
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "fleetpulse-influxdb"
    assert design is not None and len(uids) == 3

    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/fleetpulse-influxdb.yaml").read_text()
    )
    [source] = datasources["datasources"]
    assert source["uid"] == "fleetpulse-influxdb" and source["type"] == "influxdb"
    assert source["secureJsonData"]["password"].startswith("${")  # never a literal secret
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/fleetpulse.yaml").read_text()
    )
    assert providers["providers"][0]["type"] == "file"


def influxql(port: int, query: str, db: str | None = "fleetpulse") -> list[dict[str, Any]]:
    params = {"q": query, "epoch": "s"}
    if db:
        params["db"] = db
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query?{urllib.parse.urlencode(params)}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.load(response)["results"])


def readme_statements() -> list[str]:
    text = (ROOT / "deploy/influxdb/README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.integration
def test_readme_setup_statements_and_dashboard_queries_run_on_influxdb_1x(
    influxdb_v1: Server,
) -> None:
    port = influxdb_v1.port
    statements = readme_statements()
    assert any(s.startswith("CREATE DATABASE fleetpulse") for s in statements)
    for statement in statements:
        [result] = influxql(port, statement, db=None)
        assert "error" not in result, (statement, result)
    [result] = influxql(port, "SHOW RETENTION POLICIES ON fleetpulse", db=None)
    rows = [
        dict(zip(result["series"][0]["columns"], v, strict=True))
        for v in result["series"][0]["values"]
    ]
    assert {(r["name"], r["duration"], r["default"]) for r in rows} >= {
        ("fp_400d", "9600h0m0s", True)
    }
    [result] = influxql(port, "SHOW GRANTS FOR fleetpulse_writer", db=None)
    assert result["series"][0]["values"] == [["fleetpulse", "WRITE"]]

    config = InfluxConfig(
        url=f"http://127.0.0.1:{port}",
        api_version=1,
        database="fleetpulse",
        retention_policy="fp_400d",
    )
    first_day_s = (int(time.time()) // 86400 - 5) * 86400  # inside the 400-day retention
    with open_sink(config) as sink:
        # c-003 ends red and c-004 with low coverage, so the "latest" stats count something.
        extra = [
            customer_point("c-003", first_day_s + 2 * 86400, 0),
            customer_point("c-004", first_day_s + 2 * 86400, 1),
            # what the gateways' status messages become (pipeline/outputs/points.py)
            *(
                gateway_status_point({
                    "customer_id": gw[:5], "site_id": f"{gw[:5]}-s1", "gateway_id": gw, "state": "online",
                    "minute_ms": (first_day_s + 3600) * 1000, "received_records": 10, "sent_records": 9,
                    "sent_batches": 1, "dropped_records": 1, "dead_letters": 1, "errors": 0, "reconnects": 0,
                })
                for gw in ("c-001-gw", "c-002-gw")
            ),
        ]
        assert sink.write_points([*fleet_points(first_day_s), *extra]).rejected == []

    substitutions = {
        "$timeFilter": f"time >= {first_day_s}s AND time < {first_day_s + 4 * 86400}s",
        "$customer_id": "c-001",
        "/^$segment$/": "/^(enterprise|smb)$/",
        "/^$gateway_id$/": "/^(c-001-gw|c-002-gw)$/",
    }
    for path in DASHBOARDS:
        for query in queries(json.loads(path.read_text())):
            concrete = query
            for variable, value in substitutions.items():
                concrete = concrete.replace(variable, value)
            assert "$" not in concrete.replace("$/", "").replace("_$", ""), concrete
            [result] = influxql(port, concrete)
            assert "error" not in result, (path.name, concrete, result)
            assert result.get("series"), (path.name, concrete)
