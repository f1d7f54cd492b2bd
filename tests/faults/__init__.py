"""Behaviour tests: whole studies under faults (kills, resume, node loss, S3 outages, driver lock, failed trials)."""
