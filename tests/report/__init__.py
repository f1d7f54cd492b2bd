"""Tests of rest/report. A package, so test basenames may repeat across tests/<layer>/."""
