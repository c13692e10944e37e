"""mglrud/redact.py and who gets which view (issue 18 item 6; the end-to-end check as uid 65534 is
tests/integration/test_privilege.py)."""
import json
import ssl

import pytest

from mglrud import snapshot_json
from mglrud.collectors import Published
from mglrud.exposition import render_snapshot
from mglrud.http import Site
from mglrud.exposition import Exposition
from mglrud.redact import RedactedView, mapping_class, redact
from mglrud.webconfig import TLS, WebConfig
from tests.bpf_replay import replayed_snapshot


@pytest.mark.parametrize("name, shown", [
    ("[anon]", "[anon]"), ("[heap]", "[heap]"), ("[stack]", "[stack]"), ("[vdso]", "[vdso]"),
    ("[anon:secret name]", "[anon]"), ("/memfd:mglrud-test", "[memfd]"), ("/dev/shm/x", "[shmem]"),
    ("/SYSV00000000", "[shmem]"), ("/home/alice/payroll.db", "[file]"), ("/usr/lib/libc.so.6", "[file]"),
])
def test_mapping_class(name, shown):
    assert mapping_class(name) == shown


def _procfs_snapshot(tmp_path):
    import dataclasses

    from test_procfs_parse import SMAPS, Clock, fake_proc, make_source, target
    root = fake_proc(tmp_path, SMAPS)
    src = make_source(root, Clock())
    src.read([target()])
    snap, _ = replayed_snapshot(tmp_path / "replay")
    return dataclasses.replace(snap, procfs=src.read([target()], clear=False))


def test_the_redacted_json_has_no_address_and_the_figures_add_up(tmp_path):
    snap = _procfs_snapshot(tmp_path)
    full, red = snapshot_json.to_dict(snap), snapshot_json.to_dict(redact(snap))
    assert red["redacted"] is True and full["redacted"] is False
    fm = full["procfs"]["processes"][0]["mappings"]
    rm = red["procfs"]["processes"][0]["mappings"]
    assert all(m["start"] is None and m["end"] is None for m in rm) and all(m["start"] for m in fm)
    assert {m["name"] for m in rm} <= {"[anon]", "[heap]", "[stack]", "[vdso]", "[vvar]", "[file]", "[memfd]",
                                       "[shmem]", "[vsyscall]", "[vvar_vclock]"}
    assert sum(m["resident_bytes"] for m in rm) == sum(m["resident_bytes"] for m in fm)
    for t in red["hotness"]["targets"]:
        assert t["regions"] == [] and all(b["ranges"] == [] for b in t["buckets"])
    assert any(t["regions"] for t in full["hotness"]["targets"])
    assert snapshot_json.from_dict(json.loads(json.dumps(red))).redacted


def test_redacted_metrics_group_by_class_and_keep_the_bpf_sums(tmp_path):
    snap = _procfs_snapshot(tmp_path)
    full, red = render_snapshot(snap).decode(), render_snapshot(redact(snap)).decode()
    assert "/memfd:mglrud-test" in full and "/memfd:" not in red and 'mapping="[memfd]"' in red
    bpf = [line for line in full.splitlines() if line.startswith("mglrud_target_")]
    assert bpf and all(line in red for line in bpf)  # sums per target, node, lru: no address in them


def test_one_redaction_per_snapshot(monkeypatch):
    import mglrud.redact as R

    calls = []
    monkeypatch.setattr(R, "redact", lambda s: calls.append(s) or s)
    published = Published(None)
    view = RedactedView(published)
    assert view.current is None

    class Snap:
        pass
    published.publish(Snap())
    assert view.current is view.current  # cached: the render cache keys on this identity
    published.publish(Snap())
    view.current
    assert len(calls) == 2


def test_who_gets_the_full_view():
    site = Site(Published(None), Exposition(Published(None)))
    assert site.full_view(None, unix=True)
    assert not site.full_view(None, unix=False)  # the default: 127.0.0.1, no web config
    assert not site.full_view(WebConfig(path="w"), unix=False)
    tls_only = WebConfig(path="w", tls=TLS(cert_file="c", key_file="k"))
    assert not site.full_view(tls_only, unix=False)  # encrypted, but anyone may connect
    assert site.full_view(WebConfig(path="w", users=(("prometheus", "$2y$..."),)), unix=False)
    certs = WebConfig(path="w", tls=TLS(cert_file="c", key_file="k", client_auth=ssl.CERT_REQUIRED,
                                        client_auth_type="RequireAndVerifyClientCert"))
    assert site.full_view(certs, unix=False)
