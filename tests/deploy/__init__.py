"""Tests of rest/deploy. A package, so test basenames may repeat across tests/<layer>/."""
