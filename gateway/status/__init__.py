"""The operators' status page: its figures, read from Redis, as a terminal table
(`stockade status`), as Prometheus text (`/metrics`), and the server of the latter."""

from gateway.status._exposition import CONTENT_TYPE, escape_label, render_metrics
from gateway.status._gather import FleetStatus, StatusSources, StreamLag, gather
from gateway.status._server import MetricsEndpoint, serve_metrics
from gateway.status._table import render_table

__all__ = [
    "CONTENT_TYPE",
    "FleetStatus",
    "MetricsEndpoint",
    "StatusSources",
    "StreamLag",
    "escape_label",
    "gather",
    "render_metrics",
    "render_table",
    "serve_metrics",
]
