"""mglrud's config reloads: mglrud_config_last_reload_successful and ..._success_timestamp_seconds.

Named and meant like Prometheus' own prometheus_config_last_reload_successful: the
daemon (daemon.py `_reload`) sets the state; a scrape renders it. Not part of the
snapshot: a reload can fail without a new snapshot being published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily


@dataclass
class ReloadState:
    successful: bool = True
    success_timestamp: float = field(default_factory=time.time)  # the start counts as the first load

    def record(self, ok: bool, now: float | None = None) -> None:
        self.successful = ok
        if ok:
            self.success_timestamp = time.time() if now is None else now


class ReloadCollector:
    def __init__(self, state: ReloadState):
        self.state = state

    def collect(self):
        ok = GaugeMetricFamily("mglrud_config_last_reload_successful",
                               "1 if the latest config reload (SIGHUP, systemctl reload) succeeded, 0 if the "
                               "file was refused and the previous config is still in force.")
        ok.add_metric([], 1 if self.state.successful else 0)
        yield ok
        ts = GaugeMetricFamily("mglrud_config_last_reload_success_timestamp_seconds",
                               "Unix time of the latest successful config load (the start, or a reload).")
        ts.add_metric([], self.state.success_timestamp)
        yield ts
