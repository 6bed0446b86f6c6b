"""Grafana dashboards as code, and their rendering to PNG without Grafana."""
