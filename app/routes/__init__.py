"""HTTP routes: encode (+batch), predictor card, health/readiness, Prometheus metrics."""
