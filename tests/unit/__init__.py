"""Tests that need no directory server: pure functions, settings, checks, docs, layers, packaging."""
