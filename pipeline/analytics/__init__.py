"""Batch analytics over the Parquet lake: usage retention by cohort and segment, CSM coverage.

* :mod:`.usage` reads the raw archive (``<lake>/records/dt=…/hour=…``) for a
  date range and totals one usage quantity per customer, columnar with
  pyarrow compute;
* :mod:`.retention` turns two periods of those totals plus the accounts
  registry into net / gross usage retention, logo retention and the CSM
  coverage comparison (pure functions on Arrow tables);
* :mod:`fleetpulse.pipeline.cli.retention` is ``fleetpulse retention``.
"""
