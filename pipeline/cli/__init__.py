"""The ``fleetpulse`` pipeline commands: one module per command, named as the command.

Each module exposes ``add_arguments(parser)`` (no heavy imports, so ``--help``
starts fast) and ``run(args) -> int``; it parses and validates its
configuration, then calls the part that does the work: a job's ``run()`` in
:mod:`fleetpulse.pipeline.jobs`, the lander, the playbooks, a report. Nothing
imports a command module except the dispatcher (:mod:`fleetpulse.cli`) and the
Dataflow template's entry point, which derives its parameters from the
commands' parsers.
"""
