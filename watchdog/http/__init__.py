"""The watchdog's one HTTP server: /metrics, /healthz, /ready and the JSON API."""
