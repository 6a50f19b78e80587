"""The fuzz target of ``make fuzz`` (run with ``python -m tests.fuzz``); not collected by pytest."""
