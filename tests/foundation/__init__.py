"""Tests of the foundation modules at the top of rest/: errors, settings, selection, storage, tables."""
