"""Operations: run status, health checks, Prometheus metrics, logging setup.

Reads the application's state; nothing below imports it back. Knows nothing of the CLI.
"""
