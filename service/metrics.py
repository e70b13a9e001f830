"""Prometheus metrics, exported by the server's --metrics-port."""

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("identity_calls_total", "gRPC calls answered", ["method", "code"])
LATENCY = Histogram(
    "identity_call_seconds",
    "gRPC call latency",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRIES = Counter("identity_transaction_retries_total", "transactions retried after losing a race", ["method"])
OPEN_STREAMS = Gauge("identity_open_streams", "server streams open (the change feed)", ["method"])
EVENTS_APPENDED = Counter("identity_events_appended_total", "change-log events appended (R50), by kind", ["kind"])
FEED_LAG = Histogram(
    "identity_feed_lag_seconds",
    "from an event's commit to its sending on a change-feed stream (R52)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
