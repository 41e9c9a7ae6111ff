"""Prometheus metrics of the service; names follow Prometheus conventions (`_total`, `_seconds`)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("sne_http_requests_total", "HTTP requests by route, method and status.", ["route", "method", "status"])
REQUEST_LATENCY = Histogram(
    "sne_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("sne_queue_depth", "Checkpoints waiting for the encoder worker, by predictor.", ["predictor"])
LARGE_QUEUE_DEPTH = Gauge(
    "sne_large_queue_depth", "Large checkpoints (over SNE_LARGE_CHUNKS) waiting for their own lane, by predictor.",
    ["predictor"],
)
BATCH_SIZE = Histogram(
    "sne_batch_size", "Checkpoints per encoder forward, by predictor.", ["predictor"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
ENCODE_DURATION = Histogram(
    "sne_encode_duration_seconds",
    "Wall time of one batched encoder forward, by predictor.",
    ["predictor"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PARSE_FAILURES = Counter("sne_parse_failures_total", "Rejected uploads by reason.", ["reason"])
REJECTIONS = Counter(
    "sne_rejections_total", "Error responses (4xx/5xx) by status and reason (`reason` of the error body).", ["status", "reason"]
)
OOD_FLAGS = Counter(
    "sne_ood_flags_total", "Answered encodes whose checkpoint was flagged out of distribution, by predictor.", ["predictor"]
)
CACHE_HITS = Counter("sne_cache_hits_total", "Result-cache hits.")
CACHE_MISSES = Counter("sne_cache_misses_total", "Result-cache misses.")
CACHE_ERRORS = Counter("sne_cache_errors_total", "Result-cache failures (Redis down or erroring).")
PREDICTED_ACCURACY = Histogram(
    "sne_predicted_accuracy", "Predicted test accuracy of encoded checkpoints, by predictor.", ["predictor"],
    buckets=tuple(i / 10 for i in range(1, 11))
)
PREDICTOR_INFO = Info(
    "sne_predictor", "The served predictors (name, version, trained flag, default), one series each.", ["predictor"]
)
