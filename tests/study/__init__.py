"""Tests of rest/study. A package, so test basenames may repeat across tests/<layer>/."""
