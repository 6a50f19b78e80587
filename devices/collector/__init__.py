"""The gateway collector: device messages on the local broker → validated, stamped batches upstream.

``collector`` (the :class:`~.collector.Collector`: lifecycle, counters) composes
``intake`` (local broker → validation → spool or dead letters → acks),
``uplink`` (spool → central broker, status and Will) and ``worker`` (the thread
that drives both); ``spool`` (the durable, bounded FIFO on disk),
``deadletters``, ``batching`` (envelopes by count, time and size), ``config``
(TOML → typed, validated config), ``acl`` and ``cli`` (``fleetpulse gateway
run|check|acl``). Standard library + paho-mqtt only.
"""
