"""Prefect flows: thin wiring of mlpipe library calls (train monthly, score daily, backfill)."""
