"""Prometheus metrics, in a registry per application (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter(
            "sluice_activities_received", "Inbox POSTs by outcome", ["result"], registry=r
        )
        self.delivered = Counter(
            "sluice_activities_delivered", "Activities the upstream accepted", registry=r
        )
        self.retried = Counter(
            "sluice_delivery_retries", "Delivery attempts scheduled again", registry=r
        )
        self.refused = Counter(
            "sluice_activities_refused", "Activities the upstream refused (4xx)", registry=r
        )
        self.dead_lettered = Counter(
            "sluice_activities_dead_lettered", "Activities whose retries ran out", registry=r
        )
        self.verdicts = Counter(
            "sluice_verdicts", "Hold verdicts by action", ["action"], registry=r
        )
        self.media = Counter(
            "sluice_media",
            "Media files looked at by the hold, by outcome",
            ["outcome"],
            registry=r,
        )
        self.matches = Counter(
            "sluice_bank_matches",
            "Bank matches, by bank and hash kind",
            ["bank", "kind"],
            registry=r,
        )
        self.held = Gauge("sluice_activities_held", "Activities by state", ["state"], registry=r)
        self.effects = Gauge(
            "sluice_effects",
            "Effects of verdicts (notify…) by state: pending, done, dead",
            ["state"],
            registry=r,
        )
        self.receive_seconds = Histogram(
            "sluice_receive_seconds", "Inbox request handling time", buckets=_LATENCY, registry=r
        )
        self.hold_seconds = Histogram(
            "sluice_hold_seconds", "Time spent in the hold's checks", buckets=_LATENCY, registry=r
        )
        self.upstream_seconds = Histogram(
            "sluice_upstream_seconds",
            "Upstream delivery request time",
            buckets=_LATENCY,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "sluice_delivery_latency_seconds",
            "From receipt to delivery",
            buckets=_LATENCY,
            registry=r,
        )
