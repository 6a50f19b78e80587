"""What the jobs write: tables and files, InfluxDB points, and the composite that publishes every result."""
