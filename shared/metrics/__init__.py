"""Prometheus metrics (prometheus-client): the families every service shares, how they are
served, and who may read them. See docs/metrics.md for every name and label.

Labels stay bounded: a route template or a bus subject, a method, a status or error code, a
job or state name. Never a digest, a repository, a user or an id a client chose.
"""
