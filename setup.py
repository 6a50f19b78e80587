"""Maps the architecture's folders onto the ``fleetpulse`` import namespace.

``schemas/`` → ``fleetpulse.schemas``, ``devices/`` → ``fleetpulse.devices``,
``pipeline/`` → ``fleetpulse.pipeline``. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {
    "fleetpulse": "fleetpulse",
    "fleetpulse.schemas": "schemas",
    "fleetpulse.devices": "devices",
    "fleetpulse.pipeline": "pipeline",
}

packages: list[str] = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(where=folder))

setup(
    packages=packages,
    package_dir=ROOTS,
    package_data={
        "fleetpulse.schemas": ["*.json"],
        "fleetpulse.pipeline": ["**/*.yaml"],
    },
)
