"""The metric families every service has: HTTP routes, bus subjects, the NATS connection.

Each service is its own process, so the default registry holds exactly one service's
metrics; `job`/`instance` come from the scrape configuration.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics

# `_created` series double every counter for a timestamp Prometheus can do without.
disable_created_metrics()

HTTP_REQUESTS = Counter("dockyard_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "code"])
HTTP_DURATION = Histogram("dockyard_http_request_duration_seconds",
                          "Time to answer an HTTP request (to the last body byte of a streamed reply)",
                          ["route", "method"])
HTTP_BYTES_IN = Counter("dockyard_http_request_bytes", "Request body bytes received", ["route", "method"])
HTTP_BYTES_OUT = Counter("dockyard_http_response_bytes", "Response body bytes sent", ["route", "method"])

BUS_REQUESTS = Counter("dockyard_bus_requests", "Bus requests handled, by subject and outcome (ok or an error code)",
                       ["subject", "code"])
BUS_DURATION = Histogram("dockyard_bus_request_duration_seconds", "Time to handle a bus request", ["subject"])
BUS_BYTES_IN = Counter("dockyard_bus_request_bytes", "Bus request payload bytes received", ["subject"])
BUS_BYTES_OUT = Counter("dockyard_bus_response_bytes", "Bus reply payload bytes sent", ["subject"])

NATS_RECONNECTS = Counter("dockyard_nats_reconnects", "Times a NATS connection of this process came back")
NATS_DISCONNECTS = Counter("dockyard_nats_disconnects", "Times a NATS connection of this process was lost")
