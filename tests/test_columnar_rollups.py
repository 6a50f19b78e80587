"""Columnar dedupe and device-hour rollups against the per-element combiners, exactly.

The reference is the per-element code itself: ``PickSurvivorFn`` for dedupe,
``DeviceHourFn`` + ``device_hour`` for the rollups, folded here over literal
rows without a runner. Data: the simulator's fleet with redelivered copies,
and hand-made edge cases.
"""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.lake.schema import lake_schema
from fleetpulse.pipeline.model import DEVICE_HOUR_SCHEMA, DeviceHour
from fleetpulse.pipeline.transforms import DedupeRecords, DeviceHourlyRollups, lake_columns
from fleetpulse.pipeline.transforms.columnar import (
    DedupeRecordTables,
    DeviceHoursFromTables,
    DeviceHourTables,
    dedupe_table,
    device_hour_table,
    device_hours_from_table,
    group_keys,
    shard_of,
    split_table,
    table_from_ipc,
    table_to_ipc,
)
from fleetpulse.pipeline.transforms.dedupe import PickSurvivorFn, record_key
from fleetpulse.pipeline.transforms.rollups import DeviceHourFn, _device_hour_key, device_hour

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000


def row(device: str, ts_ms: int, seq: int, kind: str, *, boot: int = 1, fw: str = "2.4.1",
        gateway: str = "g1", received_ms: int | None = None, **body: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(lake_columns())
    values.update(customer_id="c1", site_id="s1", gateway_id=gateway, device_id=device, ts_ms=ts_ms,
                  boot=boot, seq=seq, kind=kind, fw=fw,
                  received_ms=ts_ms + 5000 if received_ms is None else received_ms, **body)
    return values


def usage(device: str, ts_ms: int, seq: int, *quantities: tuple[str, float, str], **kw: Any) -> dict[str, Any]:
    qs = [{"name": n, "value": float(v), "unit": u} for n, v, u in quantities]
    return row(device, ts_ms, seq, "usage", period_s=60, quantities=qs, **kw)


def reference(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[DeviceHour]]:
    """Survivors and DeviceHours as the per-element combiners compute them."""
    pick = PickSurvivorFn()
    copies: dict[Any, Any] = {}
    for r in rows:
        copies[record_key(r)] = pick.add_input(copies.get(record_key(r), pick.create_accumulator()), r)
    survivors = [best for _, best in copies.values()]
    combine = DeviceHourFn()
    hours: dict[Any, Any] = {}
    for r in survivors:
        key, _ = _device_hour_key(r)
        hours[key] = combine.add_input(hours.get(key) or combine.create_accumulator(), r)
    return survivors, sorted((device_hour(k[:4], k[4], acc) for k, acc in hours.items()), key=repr)


def columnar(tables: list[pa.Table]) -> tuple[pa.Table, int, list[DeviceHour]]:
    survivors, duplicates = dedupe_table(pa.concat_tables(tables))
    return survivors, duplicates, sorted(device_hours_from_table(device_hour_table(survivors)), key=repr)


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=lake_schema())


def simulator_rows(seed: int = 5) -> list[dict[str, Any]]:
    fleet = SimulationConfig(seed=seed, customers=4, days=4).build_fleet()
    gateways = {g.gateway_id: g for g in fleet.gateways}
    rows = []
    for message in TelemetryGenerator(fleet):
        if message.withheld or message.malformed is not None:
            continue
        gw = gateways[message.gateway_id]
        for record in json.loads(message.payload):
            values = dict.fromkeys(lake_columns())
            values.update(record)
            if "quantities" in record:
                values["quantities"] = [{**q, "value": float(q["value"])} for q in record["quantities"]]
            values.update(customer_id=gw.customer_id, site_id=gw.site_id, gateway_id=gw.gateway_id,
                          received_ms=record["ts_ms"] + 60_000)
            rows.append(values)
    return rows


def test_simulated_fleet_with_redelivered_copies_across_files_matches_exactly() -> None:
    rows = simulator_rows()
    rng = random.Random(7)
    copies = []
    for r in rng.sample(rows, len(rows) // 10):
        copy = {**r, "received_ms": r["received_ms"] + rng.choice([0, 0, -30_000, 45_000])}
        if r["kind"] == "heartbeat" and rng.random() < 0.5:
            copy["uptime_s"] = rng.randint(0, 9)  # same millisecond, other content: JSON decides
        copies.append(copy)
    everything = rows + copies
    rng.shuffle(everything)
    # Copies and device-hours spread over several "landing files".
    files = [table(everything[i::5]) for i in range(5)]
    want_rows, want_hours = reference(everything)
    survivors, duplicates, hours = columnar(files)
    assert duplicates == len(copies)
    assert sorted(map(json.dumps, survivors.to_pylist())) == sorted(map(json.dumps, want_rows))
    assert hours == want_hours
    assert list(map(repr, hours)) == list(map(repr, want_hours))  # dict order too


EDGE_ROWS = [
    # d1, hour 0: two boots, a reboot in the hour, firmware changing with it
    row("d1", T0 + 10_000, 40, "heartbeat", boot=3, interval_s=60, uptime_s=1),
    row("d1", T0 + 20_000, 41, "error", boot=3, code="E1", severity="critical"),
    row("d1", T0 + 30_000, 0, "heartbeat", boot=4, fw="2.5.0", interval_s=300),
    row("d1", T0 + 30_000, 1, "error", boot=4, fw="2.5.0", code="E2", severity="error"),
    row("d1", T0 + 40_000, 2, "error", boot=4, fw="2.5.0", code="W", severity="warning"),
    row("d1", T0 + 50_000, 4, "feature", boot=4, fw="2.5.0", feature="scan", count=2),
    row("d1", T0 + 60_000, 5, "feature", boot=4, fw="2.5.0", feature="copy", count=7),
    row("d1", T0 + 70_000, 6, "feature", boot=4, fw="2.5.0", feature="scan", count=1),
    # usage sums that floating-point order would change: fsum decides
    usage("d1", T0 + 80_000, 7, ("runtime", 0.1, "s"), ("energy", 1e16, "kWh"), boot=4, fw="2.5.0"),
    usage("d1", T0 + 90_000, 8, ("runtime", 0.2, "s"), ("energy", 1.0, "kWh"), boot=4, fw="2.5.0"),
    usage("d1", T0 + 95_000, 9, ("runtime", 0.3, "s"), ("energy", 1.0, "kWh"), ("pages", -0.0, "pages"),
          boot=4, fw="2.5.0"),
    # d1, hour 1: one record, its copy landed a minute later
    row("d1", T0 + H + 5, 10, "heartbeat", boot=4, fw="2.5.0", interval_s=300),
    row("d1", T0 + H + 5, 10, "heartbeat", boot=4, fw="2.5.0", interval_s=300, received_ms=T0 + 2 * H),
    # d2 behind two gateways in the same hour: two device-hours
    row("d2", T0 + 1000, 0, "heartbeat", gateway="g1", interval_s=7),
    row("d2", T0 + 2000, 1, "heartbeat", gateway="g2", interval_s=13),
    # d3: same instant twice, the higher seq is the latest; no heartbeat: 0 expected
    row("d3", T0 + 5000, 1, "feature", fw="1.9.0", feature="scan", count=1),
    row("d3", T0 + 5000, 2, "error", fw="1.10.0", code="E9", severity="error"),
]


def test_hand_made_edge_cases_match_exactly() -> None:
    want_rows, want_hours = reference(EDGE_ROWS)
    survivors, duplicates, hours = columnar([table(EDGE_ROWS[:7]), table(EDGE_ROWS[7:])])
    assert duplicates == 1
    assert hours == want_hours
    d1 = next(h for h in hours if h.device_id == "d1" and h.hour_ms == T0)
    assert d1.usage == {"energy_kWh": 1e16 + 2.0, "pages_pages": 0.0, "runtime_s": 0.6}
    assert d1.seq_spans == {3: (40, 41, 2), 4: (0, 9, 9)} and d1.fw == "2.5.0"
    assert (d1.features, d1.error_fw, d1.errors, d1.critical_errors) == ({"copy": 7, "scan": 3},
                                                                          {"2.4.1": 1, "2.5.0": 1}, 2, 1)
    assert d1.expected_heartbeats == 3600 / 300
    assert {(h.gateway_id, h.expected_heartbeats) for h in hours if h.device_id == "d2"} == {
        ("g1", 3600 / 7), ("g2", 3600 / 13)}
    d3 = next(h for h in hours if h.device_id == "d3")
    assert (d3.fw, d3.expected_heartbeats) == ("1.10.0", 0.0)


def test_a_tie_after_the_earliest_copy_does_not_compete() -> None:
    first = row("d1", T0, 1, "heartbeat", interval_s=60, received_ms=T0 + 5)
    # Later copies, two of them landed together, with content that sorts before the first's.
    later = [{**first, "received_ms": T0 + 6, "uptime_s": u} for u in (1, 2, 3)]
    for rows in ([first, *later], [*later, first]):
        survivors, duplicates = dedupe_table(table(rows))
        assert survivors.to_pylist() == [first] and duplicates == 3
    ties = [{**first, "uptime_s": 9}, {**first, "uptime_s": 10}, {**first, "received_ms": T0 + 6}]
    assert dedupe_table(table(ties))[0].to_pylist() == reference(ties)[0]


def test_a_reused_seq_is_one_record_within_an_hour_and_two_across_hours() -> None:
    # A device that reuses (boot, seq) breaks the contract. Copies of a record share its ts_ms, so
    # dedupe is scoped to the event hour in every engine: within an hour the earliest copy survives,
    # across hours both records are kept (nothing dropped), in both paths and in the Beam composite.
    same_hour = [row("d9", T0 + 1000, 3, "heartbeat", interval_s=60, received_ms=T0 + 9000),
                 row("d9", T0 + 2000, 3, "heartbeat", interval_s=60, received_ms=T0 + 8000)]
    other_hour = [same_hour[0], row("d9", T0 + 5 * H, 3, "heartbeat", interval_s=60, received_ms=T0 + 5 * H + 1)]
    survivors, duplicates, hours = columnar([table(same_hour[:1]), table(same_hour[1:])])
    assert (survivors.to_pylist(), duplicates) == ([same_hour[1]], 1)
    assert hours == reference(same_hour)[1]
    survivors, duplicates, hours = columnar([table(other_hour[:1]), table(other_hour[1:])])
    assert (survivors.num_rows, duplicates) == (2, 0)
    assert hours == reference(other_hour)[1] and len(hours) == 2


def test_empty_input_gives_empty_tables() -> None:
    survivors, duplicates = dedupe_table(lake_schema().empty_table())
    assert (survivors.num_rows, duplicates) == (0, 0)
    assert device_hour_table(survivors).schema == DEVICE_HOUR_SCHEMA


def test_groups_are_event_hours_by_stable_device_shards_and_parts_are_compact() -> None:
    ids = pa.array(["d1", "d2", "d1", "gw-7.dev:3"])
    assert shard_of(ids, 16).tolist() == shard_of(pa.chunked_array([ids[:2], ids[2:]]), 16).tolist()
    # CRC-32, the same in every worker process (str hash() is salted per process)
    assert shard_of(ids, 16).tolist() == [zlib.crc32(d.encode()) % 16 for d in ids.to_pylist()]
    big = table([row(f"d{i % 50}", T0 + i * 7_000, i, "heartbeat", interval_s=60) for i in range(5000)])
    for shards in (1, 4):
        parts = dict(split_table(big, group_keys(big, shards)))
        assert sum(p.num_rows for p in parts.values()) == 5000
        for key, part in parts.items():
            hour, shard = divmod(key, shards)
            assert {ts // H for ts in part["ts_ms"].to_pylist()} == {hour}
            assert {zlib.crc32(d.encode()) % shards for d in part["device_id"].to_pylist()} == {shard}
        assert len(parts) >= 5000 * 7_000 // H * (2 if shards > 1 else 1)
    # A part crosses the shuffle as IPC bytes of its own rows, not with its parent's buffers.
    encoded = {k: table_to_ipc(p) for k, p in parts.items()}
    assert max(map(len, encoded.values())) < len(table_to_ipc(big)) / 4
    assert all(table_from_ipc(encoded[k]).equals(p) for k, p in parts.items())


def test_beam_composites_match_the_per_element_transforms() -> None:
    rows = EDGE_ROWS + [{**r, "received_ms": r["received_ms"] + 1} for r in EDGE_ROWS[::3]]
    pipeline = BeamTestPipeline()
    per_element = (
        pipeline
        | "Rows" >> beam.Create(rows)
        | DedupeRecords()
        | DeviceHourlyRollups(window_mode="batch")
    )
    col = (
        pipeline
        | "Tables" >> beam.Create([table(rows[i::3]) for i in range(3)])
        | DedupeRecordTables(shards=3)
        | DeviceHourTables()
        | DeviceHoursFromTables()
    )
    expected = reference(rows)[1]
    assert_that(per_element, equal_to(expected), label="per-element")
    assert_that(col, equal_to(expected), label="columnar")
    pipeline.run().wait_until_finish()
