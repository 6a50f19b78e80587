import pytest

pytestmark = pytest.mark.integration


def test_all_three_servers_start(mosquitto, influxdb_v1, victoria_metrics):
    for server in (mosquitto, influxdb_v1, victoria_metrics):
        assert server.proc is not None and server.proc.poll() is None
