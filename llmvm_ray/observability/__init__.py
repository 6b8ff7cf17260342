"""What the system is doing: Prometheus metrics through Ray's metrics API (``/v1/stats`` is
an endpoint: ``serve/stats.py``)."""
