"""Tests of rest/core (one training run). A package, so test basenames may repeat across tests/<layer>/."""
