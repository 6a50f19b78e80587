"""The gateway's local broker as deploy/gateway/INSTALL.md installs it, on free ports in a temp dir.

The guide puts ``deploy/gateway/mosquitto.conf`` into ``/etc/mosquitto/conf.d/``
of Debian's Mosquitto, whose own ``/etc/mosquitto/mosquitto.conf`` includes it
(and sets the persistence location, a pid file and a log file). This runs that
pair, with their paths moved into a work directory and the two listeners on
free loopback ports; nothing else changes, so a setting that breaks the
installed broker (a duplicate ``persistence_location``) breaks it here too.
For the deploy and broker-crash tests and ``bench/bench_gateway.py``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import servers
from .servers import Server

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "gateway"
#: Debian's main broker config (package mosquitto), which includes conf.d/*.conf.
DEBIAN_CONF = Path("/etc/mosquitto/mosquitto.conf")


@dataclass
class GatewayBroker:
    """A local broker: devices on ``device_port`` (password + ACL), the collector on ``collector_port``."""

    server: Server
    device_port: int
    collector_port: int
    workdir: Path

    @property
    def db_path(self) -> Path:
        """Mosquitto's persistence file (its snapshot of sessions and queued messages)."""
        return self.workdir / "mosquitto.db"

    def saved(self, *texts: str) -> bool:
        """Whether the last snapshot on disk holds every one of ``texts`` (client ids, topics)."""
        try:
            data = self.db_path.read_bytes()
        except FileNotFoundError:
            return False
        return all(t.encode() in data for t in texts)

    def start(self) -> GatewayBroker:
        self.server.start()
        return self

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its snapshot on the way out."""
        self.server.stop()

    def kill(self) -> None:
        """SIGKILL: no chance to save; what is not in the last snapshot is gone."""
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, "the broker is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.server.proc = None


def _replace(text: str, replacements: Mapping[str, str], source: str) -> str:
    for old, new in replacements.items():
        assert old in text, f"{source} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def gateway_broker(workdir: Path, *, conf_text: str | None = None,
                   devices: Mapping[str, str] | None = None) -> GatewayBroker:
    """The installed pair, not yet started; ``conf_text`` replaces deploy/gateway/mosquitto.conf's text.

    ``devices`` maps device ids (their usernames) to passwords for the device listener.
    """
    if not DEBIAN_CONF.exists():
        pytest.fail(f"{DEBIAN_CONF} is missing: apt-get install mosquitto (Debian's package)")
    workdir.mkdir(parents=True, exist_ok=True)
    device_port, collector_port = servers.free_port(), servers.free_port()
    passwd = workdir / "fleetpulse.passwd"
    passwd.touch()
    for user, password in (devices or {}).items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    acl = workdir / "fleetpulse.acl"
    acl.write_text((DEPLOY / "mosquitto.acl").read_text())
    conf_d = workdir / "conf.d"
    conf_d.mkdir(exist_ok=True)
    ours = conf_text if conf_text is not None else (DEPLOY / "mosquitto.conf").read_text()
    (conf_d / "fleetpulse.conf").write_text(_replace(ours, {
        "/etc/mosquitto/fleetpulse.passwd": str(passwd),
        "/etc/mosquitto/fleetpulse.acl": str(acl),
        "listener 1883\n": f"listener {device_port} 127.0.0.1\n",
        "listener 1884 127.0.0.1\n": f"listener {collector_port} 127.0.0.1\n",
        "log_dest syslog\n": "log_dest stdout\n",
    }, "deploy/gateway/mosquitto.conf"))
    main = _replace(DEBIAN_CONF.read_text(), {
        "/run/mosquitto/mosquitto.pid": str(workdir / "mosquitto.pid"),
        "/var/lib/mosquitto/": f"{workdir}/",
        "/var/log/mosquitto/mosquitto.log": str(workdir / "mosquitto-file.log"),
        "/etc/mosquitto/conf.d": str(conf_d),
    }, str(DEBIAN_CONF))
    # Mosquitto opens the listeners in order; the collector's is the last one.
    server = servers.mosquitto_with(workdir, main, collector_port)
    return GatewayBroker(server, device_port, collector_port, workdir)
