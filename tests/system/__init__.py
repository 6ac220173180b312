"""Slow tests that start processes or subsystems: Celery, the browser, the demo, faults and killed runs,
SQLite login storms, benchmarks, and topologies of several directory servers."""
