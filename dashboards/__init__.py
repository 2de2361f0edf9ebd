"""Package data: Prometheus rules and tests, the Alertmanager example, Grafana dashboards."""
