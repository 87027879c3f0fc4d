"""The throughput harness users run (never imported by runtime code)."""
