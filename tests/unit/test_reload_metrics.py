"""mglrud_config_last_reload_successful / _success_timestamp_seconds follow Daemon._reload, and the
daemon's /metrics carries them and client_python's process_* after the snapshot's families."""

from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from mglrud.collectors import Published
from mglrud.collectors.reload import ReloadCollector
from mglrud.config import ConfigError, from_dict
from mglrud.daemon import Daemon
from mglrud.exposition import Exposition


class _Engine:
    def configure(self, cfg):
        pass


def _values(d: Daemon) -> dict:
    body, _ = Exposition(Published(), extra=(ReloadCollector(d.reloads), ProcessCollector(registry=None))).metrics()
    return {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_reload_metrics_follow_good_and_bad_reloads():
    good = from_dict({"targets": [{"name": "a", "memcg": "/**"}]})
    answers = []

    def reload_config():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    d = Daemon(good, reload_config, engine=_Engine())
    start = d.reloads.success_timestamp
    v = _values(d)
    assert v["mglrud_config_last_reload_successful"] == 1.0
    assert v["mglrud_config_last_reload_success_timestamp_seconds"] == start  # the start counts

    answers.append(ConfigError("targets[0].memcg", "bad"))
    d._reload()
    v = _values(d)
    assert v["mglrud_config_last_reload_successful"] == 0.0
    assert v["mglrud_config_last_reload_success_timestamp_seconds"] == start  # unchanged by a failure

    answers.append(good)
    d._reload()
    v = _values(d)
    assert v["mglrud_config_last_reload_successful"] == 1.0
    assert v["mglrud_config_last_reload_success_timestamp_seconds"] >= start
    # client_python's process collector, as node_exporter and Prometheus export it
    assert v["process_resident_memory_bytes"] > 0 and v["process_open_fds"] > 0
    assert "process_cpu_seconds_total" in v and "process_start_time_seconds" in v
