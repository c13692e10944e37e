#!/usr/bin/env python3
"""Build mglrud's Grafana dashboards (grafana/dashboards/*.json) with grafana-foundation-sdk.

The dashboards are code: edit this file, run it, commit both. A unit test
(tests/unit/test_grafana_dashboards.py) fails when the committed JSON differs
from what this script writes, and validates the JSON's structure; an
integration test (tests/integration/test_prometheus_e2e.py) runs every panel's
PromQL against a real Prometheus scraping real mglrud instances.

    PY=/var/cache/mglrud/venv/bin/python   # any Python >= 3.11 with the SDK
    $PY grafana/build.py            # write grafana/dashboards/*.json
    $PY grafana/build.py --check    # exit 1 if a committed file differs

grafana-foundation-sdk is Grafana Labs' typed builder library (PyPI,
pure Python, no dependencies). It is not in Debian; install it into the
project's venv (scripts/install-deps) or any Python >= 3.11:
    pip install 'grafana-foundation-sdk==1769699998!10.1.0'

Metric names and labels: docs/metrics.md. The recorded series
(memcg:..., instance:..., job:..., target:...) come from
deploy/prometheus/rules/mglrud.rules.yml: the dashboards need those rules loaded;
the Kubernetes dashboard's (namespace:..., pod:..., container:...) from
deploy/prometheus/rules/mglrud-kubernetes.rules.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

OUT = Path(__file__).resolve().parent / "dashboards"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["mglrud"]

# Label matchers every query starts from: the variables of the dashboard.
SEL = 'job=~"$job", instance=~"$instance"'
MEMCG = SEL + ', memcg=~"$memcg"'
TARGET = SEL + ', target=~"$target"'


# ---------------------------------------------------------------- variables

def v_datasource():
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def v_query(name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True,
            sort: dm.VariableSort = dm.VariableSort.ALPHABETICAL_ASC):
    v = (dashboard.QueryVariable(name).label(label).datasource(DS)
         .query({"query": query, "refId": f"var-{name}"})
         .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(sort)
         .multi(multi).include_all(include_all))
    if include_all:
        # `.+` rather than Grafana's alternation of every value: short URLs and queries on big fleets.
        v = v.all_value(".+")
    return v


def v_job():
    return v_query("job", "Job", "label_values(mglrud_build_info, job)", multi=False, include_all=False)


def v_instance(multi: bool = True):
    return v_query("instance", "Instance", 'label_values(mglrud_build_info{job=~"$job"}, instance)',
                   multi=multi, include_all=multi)


def v_memcg():
    return v_query("memcg", "Memcg", f'label_values(mglrud_memcg_resident_bytes{{{SEL}}}, memcg)')


def v_threshold(metric: str = "mglrud_memcg_cold_bytes"):
    return v_query("threshold", "Cold after (s)", f'label_values({metric}{{{SEL}}}, threshold)',
                   multi=False, include_all=False, sort=dm.VariableSort.NUMERICAL_DESC)


def v_lru():
    return (dashboard.CustomVariable("lru").label("LRU").values("anon,file")
            .multi(True).include_all(True).all_value(".+"))


def v_target(metric: str = "mglrud_mapping_resident_bytes", multi: bool = True):
    return v_query("target", "Target", f'label_values({metric}{{{SEL}}}, target)', multi=multi, include_all=multi)


# ---------------------------------------------------------------- panels

def q(expr: str, legend: str = "", *, fmt: pm.PromQueryFormat | None = None, instant: bool = False):
    t = prometheus.Dataquery().expr(expr).datasource(DS)
    if legend:
        t = t.legend_format(legend)
    if fmt is not None:
        t = t.format(fmt)
    return t.instant() if instant else t.range()


class Board:
    """Collects panels, numbering panel ids and query refIds (the SDK leaves both to us)."""

    def __init__(self, uid: str, title: str, description: str, variables: list):
        self.d = (dashboard.Dashboard(title).uid(uid).description(description).tags(TAGS)
                  .refresh("30s").time("now-1h", "now").timezone("browser")
                  .tooltip(dm.DashboardCursorSync.CROSSHAIR)
                  .link(dashboard.DashboardLink("mglrud").type(dm.DashboardLinkType.DASHBOARDS)
                        .tags(TAGS).as_dropdown(True).include_vars(True).keep_time(True)))
        for v in variables:
            self.d = self.d.with_variable(v)
        self.next_id = 1

    def row(self, title: str) -> "Board":
        self.d = self.d.with_row(dashboard.Row(title).id(self._id()))
        return self

    def add(self, panel, title: str, description: str, queries: list, *, w: int = 12, h: int = 8) -> "Board":
        panel = panel.id(self._id()).title(title).description(description).datasource(DS).span(w).height(h)
        for i, t in enumerate(queries):
            panel = panel.with_target(t.ref_id(chr(ord("A") + i)))
        self.d = self.d.with_panel(panel)
        return self

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def build(self):
        return self.d.build()


def timeseries_panel(unit: str, *, stacked: bool = False, max_: float | None = None):
    p = timeseries.Panel().unit(unit).line_width(1).fill_opacity(60 if stacked else 10)
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    if max_ is not None:
        p = p.min(0).max(max_)
    return p


def heatmap_panel(y_unit: str, cell_unit: str, layout: common.HeatmapCellLayout, value: str):
    """A heatmap of buckets Prometheus already computed (calculate off); `value` names what a cell holds."""
    return (heatmap.Panel().calculate(False)
            .rows_frame(heatmap.RowsHeatmapOptions().layout(layout).value(value))
            .y_axis(heatmap.YAxisConfig().unit(y_unit))
            .cell_values(heatmap.CellValues().unit(cell_unit))
            .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64))
            .show_tooltip().show_legend().show_y_histogram())


def stat_panel(unit: str):
    return stat.Panel().unit(unit).graph_mode(common.BigValueGraphMode.AREA).color_mode(common.BigValueColorMode.VALUE)


def table_panel(unit: str):
    return table.Panel().unit(unit)


def bar_panel(unit: str, max_: float | None = None):
    p = bargauge.Panel().unit(unit).orientation(common.VizOrientation.HORIZONTAL).display_mode(
        common.BarGaugeDisplayMode.GRADIENT)
    if max_ is not None:
        p = p.min(0).max(max_)
    return p


# ---------------------------------------------------------------- dashboards

def fleet():
    b = Board("mglrud-fleet", "mglrud / Fleet overview",
              "Cold memory across every host mglrud runs on: per host, per memcg, the coldest memcgs, and "
              "mglrud's alerts. Needs deploy/prometheus/rules/mglrud.rules.yml and mglrud.alerts.yml loaded.",
              [v_datasource(), v_job(), v_instance(), v_memcg(), v_threshold()])
    b.row("Fleet")
    b.add(stat_panel("percentunit"), "Fleet cold fraction",
          "Cold bytes / resident bytes over every memcg of every host of this job, at the chosen threshold.",
          [q('job:mglrud_memcg_cold_fraction:ratio{job=~"$job", threshold="$threshold"}', "{{job}}")], w=6, h=6)
    b.add(stat_panel("bytes"), "Fleet cold bytes",
          "Bytes not accessed for at least the chosen threshold, summed over the fleet.",
          [q('job:mglrud_memcg_cold_bytes:sum{job=~"$job", threshold="$threshold"}', "{{job}}")], w=6, h=6)
    b.add(stat_panel("none"), "Hosts up",
          "mglrud instances Prometheus scraped successfully in its latest scrape, of all it scrapes.",
          [q(f'sum(up{{{SEL}}})', "up"), q(f'count(up{{{SEL}}})', "scraped")], w=6, h=6)
    b.add(table_panel("none"), "mglrud alerts",
          "Alerts of deploy/prometheus/rules/mglrud.alerts.yml that are pending or firing now (Prometheus' "
          "ALERTS series). The runbook for each is in the README.",
          [q('ALERTS{alertname=~"Mglrud.*", instance=~"$instance"}', fmt=pm.PromQueryFormat.TABLE, instant=True)],
          w=6, h=6)
    b.row("Per host")
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per host",
          "Per host: cold bytes / resident bytes over all its exported memcgs at the chosen threshold.",
          [q(f'instance:mglrud_memcg_cold_fraction:ratio{{{SEL}, threshold="$threshold"}}', "{{instance}}")])
    b.add(timeseries_panel("bytes"), "Cold and resident bytes per host",
          "Per host: resident bytes on the multi-gen LRU, and how much of it is cold.",
          [q(f'instance:mglrud_memcg_resident_bytes:sum{{{SEL}}}', "{{instance}} resident"),
           q(f'instance:mglrud_memcg_cold_bytes:sum{{{SEL}, threshold="$threshold"}}', "{{instance}} cold")])
    b.row("Per memcg")
    b.add(bar_panel("bytes"), "Top 10 memcgs by cold bytes",
          "The memcgs with the most bytes idle for at least the chosen threshold, across the selected hosts.",
          [q(f'topk(10, memcg:mglrud_memcg_cold_bytes:sum{{{SEL}, threshold="$threshold"}})',
             "{{instance}} {{memcg}}", instant=True)])
    b.add(bar_panel("percentunit", max_=1), "Top 10 memcgs by cold fraction (>= 64 MiB)",
          "The memcgs with the largest share of cold memory, among memcgs with at least 64 MiB resident "
          "(the floor the MglrudColdMemoryHigh alert uses).",
          [q(f'topk(10, memcg:mglrud_memcg_cold_fraction:ratio{{{SEL}, threshold="$threshold"}} '
             f'and on (job, instance, memcg) memcg:mglrud_memcg_resident_bytes:sum{{{SEL}}} >= 64 * 1024 * 1024)',
             "{{instance}} {{memcg}}", instant=True)])
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per memcg",
          "Cold bytes / resident bytes of each selected memcg (summed over nodes and LRUs).",
          [q(f'memcg:mglrud_memcg_cold_fraction:ratio{{{MEMCG}, threshold="$threshold"}}',
             "{{instance}} {{memcg}}")], w=24)
    b.row("Hosts without MGLRU (/proc source)")
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per /proc target",
          "Hosts whose kernel has no MGLRU report per target (the processes a target selects) from "
          "/proc smaps: cold bytes / resident bytes at each threshold.",
          [q(f'target:mglrud_mapping_cold_fraction:ratio{{{SEL}}}', "{{instance}} {{target}} >{{threshold}}s")],
          w=24)
    return b.build()


def host():
    b = Board("mglrud-host", "mglrud / Host",
              "One host's memcgs as the multi-gen LRU sees them: idle-age heatmap, cold bytes by NUMA node "
              "and LRU, resident vs recently accessed, generations.",
              [v_datasource(), v_job(), v_instance(multi=False), v_memcg(), v_lru(), v_threshold()])
    sel = MEMCG + ', lru=~"$lru"'
    b.row("Idle age")
    b.add(heatmap_panel("s", "bytes", common.HeatmapCellLayout.LE, "bytes"), "Idle age of resident memory",
          "Bytes by how long they have not been accessed (lower bound: the age of the next younger generation), "
          "over time. Each row is a bucket of mglrud_memcg_idle_age_seconds, a gauge histogram in bytes; "
          "the top row (+Inf) is idle longer than the largest bucket edge.",
          [q(f'sum by (le) (mglrud_memcg_idle_age_seconds_bucket{{{sel}}})', "{{le}}",
             fmt=pm.PromQueryFormat.HEATMAP)], w=24, h=10)
    b.row("Cold memory")
    b.add(timeseries_panel("bytes", stacked=True), "Cold bytes by NUMA node and LRU",
          "Bytes not accessed for at least the chosen threshold, per NUMA node and LRU (anon: swap-backed; "
          "file: page cache).",
          [q(f'sum by (numa_node, lru) (mglrud_memcg_cold_bytes{{{sel}, threshold="$threshold"}})',
             "NUMA node {{numa_node}} {{lru}}")])
    b.add(timeseries_panel("bytes"), "Resident vs recently accessed",
          "Resident bytes, and bytes in the youngest generation (gen 0): pages the latest aging walk found "
          "accessed, plus pages faulted in since. The gap is memory not touched for at least one aging interval.",
          [q(f'sum by (lru) (mglrud_memcg_resident_bytes{{{sel}}})', "resident {{lru}}"),
           q(f'sum by (lru) (mglrud_memcg_generation_bytes{{{sel}, gen="0"}})', "youngest generation {{lru}}")])
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per memcg",
          "Cold bytes / resident bytes of each memcg at the chosen threshold (recorded by mglrud.rules.yml).",
          [q(f'memcg:mglrud_memcg_cold_fraction:ratio{{{MEMCG}, threshold="$threshold"}}', "{{memcg}}")])
    b.add(table_panel("bytes"), "Memcgs by resident bytes",
          "Resident and cold bytes of each memcg now.",
          [q(f'sort_desc(memcg:mglrud_memcg_resident_bytes:sum{{{MEMCG}}})', fmt=pm.PromQueryFormat.TABLE,
             instant=True),
           q(f'memcg:mglrud_memcg_cold_bytes:sum{{{MEMCG}, threshold="$threshold"}}', fmt=pm.PromQueryFormat.TABLE,
             instant=True)])
    b.row("Generations")
    b.add(timeseries_panel("bytes", stacked=True), "Bytes per generation",
          "Bytes in each generation, 0 = youngest. Aging adds a generation and folds the oldest into the next.",
          [q(f'sum by (gen) (mglrud_memcg_generation_bytes{{{sel}}})', "gen {{gen}}")])
    b.add(timeseries_panel("s"), "Generation age",
          "Seconds since each generation was created, the oldest among the selected memcgs and nodes "
          "(ages do not add up, so max, not sum).",
          [q(f'max by (gen) (mglrud_memcg_generation_age_seconds{{{MEMCG}}})', "gen {{gen}}")])
    return b.build()


def process():
    b = Board("mglrud-process", "mglrud / Process",
              "A target's processes mapping by mapping, from the /proc source (smaps Referenced after "
              "clear_refs; kernels without MGLRU). With mglrud's kernel patch, the BPF source's address x time "
              "heatmap is on the mglrud / Heat (BPF) dashboard.",
              [v_datasource(), v_job(), v_instance(multi=False), v_target(),
               v_threshold("mglrud_mapping_cold_bytes"), v_lru()])
    b.row("Heat")
    b.add(heatmap_panel("none", "percentunit", common.HeatmapCellLayout.UNKNOWN, "accessed"), "Mapping x time: share accessed",
          "Each row is a mapping (the target's largest ones, the rest summed as \"other\"); the colour is the "
          "share of its resident bytes referenced during each interval (0: untouched, 1: all of it).",
          [q(f'sum by (comm, mapping) (mglrud_mapping_accessed_bytes{{{TARGET}}}) '
             f'/ sum by (comm, mapping) (mglrud_mapping_resident_bytes{{{TARGET}}})',
             "{{comm}} {{mapping}}")], w=24, h=10)
    b.add(heatmap_panel("s", "bytes", common.HeatmapCellLayout.LE, "bytes"), "Idle age of the target's memory",
          "Bytes by how long they have not been referenced (a lower bound good to one interval), over time: "
          "the gauge histogram mglrud_mapping_idle_age_seconds.",
          [q(f'sum by (le) (mglrud_mapping_idle_age_seconds_bucket{{{TARGET}, lru=~"$lru"}})', "{{le}}",
             fmt=pm.PromQueryFormat.HEATMAP)], w=24, h=10)
    b.row("Mappings")
    b.add(timeseries_panel("bytes", stacked=True), "Resident bytes by mapping",
          "smaps Rss of each mapping (summed over processes, nodes and LRUs).",
          [q(f'sum by (comm, mapping) (mglrud_mapping_resident_bytes{{{TARGET}, lru=~"$lru"}})',
             "{{comm}} {{mapping}}")])
    b.add(timeseries_panel("bytes"), "Accessed bytes by mapping",
          "Bytes referenced during the latest interval (smaps Referenced one interval after clear_refs).",
          [q(f'sum by (comm, mapping) (mglrud_mapping_accessed_bytes{{{TARGET}}})', "{{comm}} {{mapping}}")])
    b.add(timeseries_panel("bytes"), "Cold bytes by mapping",
          "Resident bytes not referenced for at least the chosen threshold.",
          [q(f'sum by (comm, mapping) (mglrud_mapping_cold_bytes{{{TARGET}, lru=~"$lru", threshold="$threshold"}})',
             "{{comm}} {{mapping}}")])
    b.add(timeseries_panel("s"), "Idle time by mapping",
          "Seconds since any byte of the mapping was seen referenced (0: accessed in the latest interval).",
          [q(f'max by (comm, mapping) (mglrud_mapping_idle_seconds{{{TARGET}}})', "{{comm}} {{mapping}}")])
    b.row("NUMA and LRU")
    b.add(timeseries_panel("bytes", stacked=True), "Resident bytes by NUMA node",
          "From /proc/PID/numa_maps.",
          [q(f'sum by (numa_node) (mglrud_mapping_resident_bytes{{{TARGET}, lru=~"$lru"}})', "NUMA node {{numa_node}}")])
    b.add(timeseries_panel("bytes", stacked=True), "Resident bytes by LRU",
          "anon: anonymous and shmem (swap-backed); file: page cache.",
          [q(f'sum by (lru) (mglrud_mapping_resident_bytes{{{TARGET}}})', "{{lru}}")])
    b.add(timeseries_panel("none"), "Processes read",
          "Processes of the target read in its latest interval (the largest by RSS, procfs.max_processes).",
          [q(f'mglrud_target_processes{{{TARGET}}}', "{{target}}")])
    b.add(timeseries_panel("s"), "Interval",
          "Length of the interval over which accessed bytes were measured.",
          [q(f'mglrud_procfs_interval_seconds{{{TARGET}}}', "{{target}}")])
    return b.build()


def heat():
    b = Board("mglrud-heat", "mglrud / Heat (BPF)",
              "One target's memory at region precision, from the BPF source (mglrud's kernel patch: the "
              "MGLRU aging walk's accessed bits, counted per bpf.region_size region): access heat over the "
              "address space x time, the seed's heatmap; idle ages, cold bytes and accessed bytes by NUMA node "
              "and LRU; the program's own health.",
              [v_datasource(), v_job(), v_instance(multi=False),
               v_target("mglrud_target_accessed_bytes_total", multi=False),
               v_threshold("mglrud_target_region_cold_bytes"), v_lru()])
    b.row("Address x time")
    b.add(heatmap_panel("percentunit", "Bps", common.HeatmapCellLayout.LE, "bytes/s accessed"),
          "Access heat over the address space",
          "Rows: the target's mapped address space (resident mappings one after the other, holes collapsed), "
          "bottom = lowest address, as a fraction; colour: bytes per second the aging walk found accessed "
          "there (an exponentially weighted rate, half-life bpf.half_life). /snapshot.json and "
          "`mglrud heatmap` name the addresses and mappings of each row. Process targets only.",
          [q(f'sum by (le) (mglrud_target_access_offset_ratio_bucket{{{TARGET}}})', "{{le}}",
             fmt=pm.PromQueryFormat.HEATMAP)], w=24, h=12)
    b.add(heatmap_panel("s", "bytes", common.HeatmapCellLayout.LE, "bytes"), "Idle age of the target's memory",
          "Resident bytes by how long the aging walk has not found them accessed (a lower bound good to one "
          "aging interval); +Inf holds memory never found accessed since mglrud started.",
          [q(f'sum by (le) (mglrud_target_region_idle_age_seconds_bucket{{{TARGET}, lru=~"$lru"}})', "{{le}}",
             fmt=pm.PromQueryFormat.HEATMAP)], w=24, h=8)
    b.row("Nodes and LRUs")
    b.add(timeseries_panel("Bps"), "Accessed bytes per second by NUMA node and LRU",
          "rate() of mglrud_target_accessed_bytes_total: bytes the aging walk found accessed, per second.",
          [q(f'sum by (numa_node, lru) (rate(mglrud_target_accessed_bytes_total{{{TARGET}, lru=~"$lru"}}'
             f'[$__rate_interval]))', "NUMA node {{numa_node}} {{lru}}")])
    b.add(timeseries_panel("bytes", stacked=True), "Cold bytes by NUMA node and LRU",
          "Resident bytes not found accessed for at least the chosen threshold.",
          [q(f'sum by (numa_node, lru) (mglrud_target_region_cold_bytes{{{TARGET}, lru=~"$lru", '
             f'threshold="$threshold"}})', "NUMA node {{numa_node}} {{lru}}")])
    b.row("Program")
    b.add(timeseries_panel("ops"), "Tracepoint events per second",
          "Events the program saw (any process), those of a target, and those dropped because its map was "
          "full (raise bpf.max_regions or bpf.region_size).",
          [q(f'rate(mglrud_bpf_events_total{{{SEL}}}[$__rate_interval])', "seen"),
           q(f'rate(mglrud_bpf_matched_events_total{{{SEL}}}[$__rate_interval])', "targets'"),
           q(f'rate(mglrud_bpf_dropped_events_total{{{SEL}}}[$__rate_interval])', "dropped")], w=8)
    b.add(timeseries_panel("percentunit", max_=1), "Map fill",
          "Entries in the program's map / its capacity (bpf.max_regions).",
          [q(f'mglrud_bpf_map_entries{{{SEL}}} / mglrud_bpf_map_capacity{{{SEL}}}', "{{instance}}")], w=8)
    b.add(stat_panel("none"), "Program attached",
          "1 while the program is attached; the event label names the tracepoint.",
          [q(f'mglrud_bpf_program_attached{{{SEL}}}', "{{event}}")], w=8)
    return b.build()


def daemon():
    b = Board("mglrud-daemon", "mglrud / Daemon health",
              "Is mglrud itself working: scrapes, sources, snapshot age, aging runs, errors and durations, "
              "and how many series it costs.",
              [v_datasource(), v_job(), v_instance()])
    b.row("Up")
    b.add(stat_panel("none"), "Scrape up", "Prometheus' `up` for each mglrud instance: 1 scraped, 0 failed.",
          [q(f'up{{{SEL}}}', "{{instance}}")], w=8, h=6)
    b.add(timeseries_panel("none", max_=1), "Sources up",
          "mglrud_source_up: 1 if the source (lru_gen, procfs, bpf) was read in the latest cycle. "
          "`mglrud check` and the log say why one is down.",
          [q(f'mglrud_source_up{{{SEL}}}', "{{instance}} {{source}}")], w=8, h=6)
    b.add(timeseries_panel("s"), "Snapshot age",
          "Seconds since the snapshot /metrics renders was taken; it grows when the loop stalls "
          "(alert MglrudSnapshotStale).",
          [q(f'mglrud_snapshot_age_seconds{{{SEL}}}', "{{instance}}")], w=8, h=6)
    b.row("Aging")
    b.add(timeseries_panel("ops"), "Aging runs and errors per second",
          "Aging writes to lru_gen per second, and failed ones by reason (docs/metrics.md lists the reasons).",
          [q(f'sum by (instance) (rate(mglrud_aging_runs_total{{{SEL}}}[$__rate_interval]))', "{{instance}} runs"),
           q(f'sum by (instance, reason) (rate(mglrud_aging_errors_total{{{SEL}}}[$__rate_interval]))',
             "{{instance}} {{reason}}")])
    b.add(timeseries_panel("s"), "Aging duration (p50, p99)",
          "Time one aging write took (the kernel's page-table walk of one memcg on one node). Empty until "
          "something is aged.",
          [q(f'histogram_quantile(0.5, sum by (instance, le) '
             f'(rate(mglrud_aging_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{instance}} p50"),
           q(f'histogram_quantile(0.99, sum by (instance, le) '
             f'(rate(mglrud_aging_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{instance}} p99")])
    b.add(heatmap_panel("s", "short", common.HeatmapCellLayout.LE, "aging runs"), "Aging duration heatmap",
          "Aging writes per duration bucket over time (mglrud_aging_duration_seconds, a counter histogram).",
          [q(f'sum by (le) (increase(mglrud_aging_duration_seconds_bucket{{{SEL}}}[$__rate_interval]))', "{{le}}",
             fmt=pm.PromQueryFormat.HEATMAP)])
    b.add(timeseries_panel("none"), "Memcgs per target",
          "Memcgs each target resolved to in the latest cycle (0: the log or /snapshot.json says why).",
          [q(f'mglrud_target_memcgs{{{SEL}}}', "{{instance}} {{target}}")])
    b.row("Cost")
    b.add(timeseries_panel("none"), "Series per scrape",
          "Samples in each scrape of mglrud (Prometheus' scrape_samples_scraped), and the mglrud_* series "
          "Prometheus holds now per instance. docs/fleet.md has the measured count per host.",
          [q(f'scrape_samples_scraped{{{SEL}}}', "{{instance}} scraped"),
           q(f'count by (instance) ({{__name__=~"mglrud_.+", {SEL}}})', "{{instance}} mglrud_* series")])
    b.add(timeseries_panel("s"), "Scrape duration",
          "How long Prometheus took to scrape each instance (scrape_duration_seconds).",
          [q(f'scrape_duration_seconds{{{SEL}}}', "{{instance}}")])
    b.add(table_panel("none"), "Versions", "mglrud_build_info: which mglrud runs where.",
          [q(f'mglrud_build_info{{{SEL}}}', fmt=pm.PromQueryFormat.TABLE, instant=True)])
    return b.build()


# Kubernetes: the recorded series of deploy/prometheus/rules/mglrud-kubernetes.rules.yml (mglrud_memcg_info
# joined with kube-state-metrics). None of them has mglrud's NUMA node label: they are summed over it.
K8S = 'job=~"$job", namespace=~"$namespace"'
K8S_POD = K8S + ', instance=~"$instance", pod=~"$pod"'


def kubernetes():
    b = Board("mglrud-kubernetes", "mglrud / Kubernetes",
              "Which namespace, pod and container holds the cold memory: mglrud's memcgs named by "
              "mglrud_memcg_info and joined with kube-state-metrics' kube_pod_info and kube_pod_container_info. "
              "Needs deploy/prometheus/rules/mglrud.rules.yml and mglrud-kubernetes.rules.yml loaded, and "
              "kube-state-metrics scraped by the same Prometheus.",
              [v_datasource(), v_job(),
               v_query("namespace", "Namespace",
                       'label_values(namespace:mglrud_memcg_resident_bytes:sum{job=~"$job"}, namespace)'),
               v_query("instance", "Node (instance)",
                       f'label_values(pod:mglrud_memcg_resident_bytes:sum{{{K8S}}}, instance)'),
               v_query("pod", "Pod",
                       f'label_values(pod:mglrud_memcg_resident_bytes:sum{{{K8S}, instance=~"$instance"}}, pod)'),
               v_query("threshold", "Cold after (s)",
                       'label_values(namespace:mglrud_memcg_cold_bytes:sum{job=~"$job"}, threshold)',
                       multi=False, include_all=False, sort=dm.VariableSort.NUMERICAL_DESC)])
    b.row("Namespaces")
    b.add(bar_panel("bytes"), "Top 10 namespaces by cold bytes",
          "Bytes of the namespace's pods (their containers, sandboxes and pod cgroups, on every node) not "
          "accessed for at least the chosen threshold.",
          [q(f'topk(10, namespace:mglrud_memcg_cold_bytes:sum{{{K8S}, threshold="$threshold"}})', "{{namespace}}",
             instant=True)])
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per namespace",
          "Cold bytes / resident bytes of each namespace's pods at the chosen threshold.",
          [q(f'namespace:mglrud_memcg_cold_fraction:ratio{{{K8S}, threshold="$threshold"}}', "{{namespace}}")])
    b.row("Pods")
    b.add(bar_panel("bytes"), "Top 10 pods by cold bytes",
          "The pods with the most memory idle for at least the chosen threshold.",
          [q(f'topk(10, pod:mglrud_memcg_cold_bytes:sum{{{K8S_POD}, threshold="$threshold"}})',
             "{{namespace}}/{{pod}}", instant=True)])
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per pod",
          "Cold bytes / resident bytes of each pod at the chosen threshold.",
          [q(f'pod:mglrud_memcg_cold_fraction:ratio{{{K8S_POD}, threshold="$threshold"}}', "{{namespace}}/{{pod}}")])
    b.add(timeseries_panel("bytes"), "Resident and cold bytes per pod",
          "Each pod's memory on the multi-gen LRU, and how much of it is cold.",
          [q(f'pod:mglrud_memcg_resident_bytes:sum{{{K8S_POD}}}', "{{namespace}}/{{pod}} resident"),
           q(f'pod:mglrud_memcg_cold_bytes:sum{{{K8S_POD}, threshold="$threshold"}}', "{{namespace}}/{{pod}} cold")])
    b.add(timeseries_panel("bytes", stacked=True), "Cold bytes by QoS class",
          "Cold bytes of the selected nodes' pod memcgs by the pod's QoS class (Guaranteed, Burstable, "
          "BestEffort; mglrud_memcg_info). Cold Guaranteed memory is memory reserved for nothing.",
          [q(f'sum by (qos_class) (memcg:mglrud_memcg_cold_bytes:sum{{job=~"$job", instance=~"$instance", '
             f'threshold="$threshold"}} * on (job, instance, memcg) group_left (qos_class) '
             f'mglrud_memcg_info{{job=~"$job", qos_class!=""}})', "{{qos_class}}")])
    b.row("Containers")
    b.add(bar_panel("bytes"), "Top 10 containers by cold bytes",
          "Cold bytes of each container's own memcg (the pod's sandbox and pod cgroup are in the pod's total "
          "only).",
          [q(f'topk(10, container:mglrud_memcg_cold_bytes:sum{{{K8S_POD}, threshold="$threshold"}})',
             "{{namespace}}/{{pod}}/{{container}}", instant=True)])
    b.add(timeseries_panel("percentunit", max_=1), "Cold fraction per container",
          "Cold bytes / resident bytes of each container at the chosen threshold.",
          [q(f'container:mglrud_memcg_cold_fraction:ratio{{{K8S_POD}, threshold="$threshold"}}',
             "{{namespace}}/{{pod}}/{{container}}")])
    return b.build()


DASHBOARDS = {"mglrud-fleet.json": fleet, "mglrud-host.json": host,
              "mglrud-process.json": process, "mglrud-heat.json": heat, "mglrud-daemon.json": daemon,
              "mglrud-kubernetes.json": kubernetes}


def render() -> dict[str, str]:
    return {name: json.dumps(make(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    p.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    args = p.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"build.py: {', '.join(stale)} differ from the generated output; run python3 grafana/build.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
