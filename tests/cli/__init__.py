"""Tests of rest/cli. A package, so test basenames may repeat across tests/<layer>/."""
