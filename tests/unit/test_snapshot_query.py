"""/snapshot.json?target=&pid=&offset=&limit=: one target's or process's part, a page of region cells.

The snapshot is the BPF source replaying the dumps captured in the test guest (tests/bpf_replay.py);
the whole document without a query is the golden tests' business (test_snapshot_schema.py), here it
is only compared with itself through the query path.
"""

import dataclasses
import json

import pytest

from mglrud import http as mhttp, snapshot_json
from mglrud.collectors import Published
from mglrud.snapshot_json import Query, parse_query, to_dict, to_json
from tests.bpf_replay import META, replayed_snapshot


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    s, _ = replayed_snapshot(tmp_path_factory.mktemp("replay"))
    return s


def _regions(doc):
    return [r for t in doc["hotness"]["targets"] for r in t["regions"]]


def test_no_query_is_the_whole_document_byte_for_byte(snap):
    assert to_json(snap, Query()) == to_json(snap) == to_json(snap, parse_query(""))
    assert "query" not in to_dict(snap)


@pytest.mark.parametrize("piece", [1 << 13, 100, 1])
def test_the_pieces_served_are_to_json_byte_for_byte(snap, monkeypatch, piece):
    """/snapshot.json writes to_json_pieces() one after another (no token list of the whole text):
    joined they are to_json()'s text, for every query form and piece size."""
    monkeypatch.setattr(snapshot_json, "_PIECE", piece)
    for q in (None, Query(pid=META["pid"], limit=3), Query(target="m"), Query(form="columns")):
        pieces = snapshot_json.to_json_pieces(snap, q)
        assert b"".join(pieces) == to_json(snap, q).encode()
        if piece == 100 and q is None:
            assert len(pieces) > 3 and all(len(p) >= 100 for p in pieces[:-1])


def test_pid_keeps_that_process_only(snap):
    whole = to_dict(snap)
    assert len({r["tgid"] for r in _regions(whole)}) >= 1
    doc = to_dict(snap, Query(pid=META["pid"]))
    assert _regions(doc) == [r for r in _regions(whole) if r["tgid"] == META["pid"]] != []
    assert doc["query"]["regions_matched"] == len(_regions(doc))
    assert {m["memcg_id"] for m in doc["memcgs"]} <= {r["memcg_id"] for r in _regions(doc)}
    assert _regions(to_dict(snap, Query(pid=1))) == [] and to_dict(snap, Query(pid=1))["memcgs"] == []


def test_target_keeps_that_target_only(snap):
    doc = to_dict(snap, Query(target="m"))
    assert [t["name"] for t in doc["hotness"]["targets"]] == ["m"]
    assert [t["name"] for t in doc["targets"]] == [t["name"] for t in to_dict(snap)["targets"]], "all still listed"
    assert to_dict(snap, Query(target="nope"))["hotness"]["targets"] == []


def test_pages_of_regions_add_up_to_the_whole_list(snap):
    whole = _regions(to_dict(snap))
    assert len(whole) > 7
    pages, offset = [], 0
    while True:
        doc = to_dict(snap, Query(offset=offset, limit=7))
        got = _regions(doc)
        assert doc["query"]["regions_matched"] == len(whole)
        if not got:
            break
        assert len(got) <= 7
        pages += got
        offset += 7
    assert pages == whole
    assert _regions(to_dict(snap, Query(limit=0))) == []


def test_the_typed_reader_reads_a_filtered_document(snap):
    # "query" is not part of SnapshotDoc (the round-trip tests hold it to the unfiltered document)
    doc = snapshot_json.from_dict(json.loads(to_json(snap, Query(pid=META["pid"], limit=3))))
    assert sum(len(v) for v in doc.regions().values()) == 3 and {g for g, _ in doc.regions()} == {META["pid"]}


@pytest.mark.parametrize("qs,message", [
    ("pid=abc", "pid='abc' is not a positive integer"),
    ("pid=0", "pid='0' is not a positive integer"),
    ("limit=-1", "limit='-1' is not a non-negative integer"),
    ("pid=1&pid=2", "parameter 'pid' given 2 times"),
    ("colour=red", "unknown parameter 'colour'; /snapshot.json takes target, pid, offset, limit, form, found"),
])
def test_bad_queries_name_the_parameter(qs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("?", r"\?")):
        parse_query(qs)
    assert parse_query("target=web&pid=12&offset=3&limit=4") == Query("web", 12, 3, 4)


def _unix_get(path, target):
    from mglrud import client
    conn = client._UnixConnection(path, 30)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_http_serves_the_query_and_refuses_a_bad_one(snap, tmp_path):
    # the unix socket: the full view (over TCP without credentials regions are redacted)
    sock = str(tmp_path / "s.sock")
    srv, _ = mhttp.serve(sock, 0, Published(snap))
    try:
        status, body = _unix_get(sock, f"/snapshot.json?pid={META['pid']}&limit=2")
        assert status == 200
        assert _regions(json.loads(body)) == _regions(to_dict(snap, Query(pid=META["pid"], limit=2))) != []
        status, body = _unix_get(sock, "/snapshot.json?pid=x")
        assert (status, body) == (400, b"/snapshot.json: pid='x' is not a positive integer\n")
        status, body = _unix_get(sock, "/snapshot.json")
        assert (status, body) == (200, to_json(snap).encode())
    finally:
        srv.shutdown()
        srv.server_close()


def test_client_and_heatmap_feed_ask_only_for_their_process(snap, tmp_path):
    from mglrud import client
    from mglrud.tui import feeds

    sock = str(tmp_path / "s.sock")
    srv, _ = mhttp.serve(sock, 0, Published(snap))
    url = f"unix:{sock}"
    try:
        asked = client.fetch_snapshot(url, pid=META["pid"])
        assert {g for g, _ in asked.regions()} == {META["pid"]}
        assert asked.regions() == snapshot_json.from_dict(to_dict(snap)).regions(pid=META["pid"])
        assert feeds.DaemonFeed(url, "m", None).poll().hotness.targets[0].name == "m"
        assert len(feeds.DaemonFeed(url, "m", None).poll().hotness.targets) == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_columns_form_reads_as_the_same_cells_in_a_third_of_the_bytes(snap):
    # ?form=columns (what `mglrud heatmap` and `report` ask for): one list per field, no indentation
    for q in (Query(pid=META["pid"]), Query(target="m"), Query(offset=3, limit=5)):
        cols = Query(q.target, q.pid, q.offset, q.limit, form="columns")
        rows_doc, cols_doc = to_dict(snap, q), to_dict(snap, cols)
        assert all(t["regions"] == [] for t in cols_doc["hotness"]["targets"])
        assert cols_doc["query"]["regions_matched"] == rows_doc["query"]["regions_matched"]
        assert snapshot_json.from_dict(json.loads(to_json(snap, cols))) == \
            snapshot_json.from_dict(json.loads(to_json(snap, q)))
    whole = to_json(snap, Query(form="columns"))
    assert snapshot_json.from_dict(json.loads(whole)) == snapshot_json.from_dict(json.loads(to_json(snap)))
    assert 3 * len(whole) < len(to_json(snap)), (len(whole), len(to_json(snap)))
    assert parse_query("pid=5&form=columns") == Query(pid=5, form="columns")
    with pytest.raises(ValueError, match="form='x' is not one of rows, columns"):
        parse_query("form=x")


def test_a_bad_column_is_refused_naming_it(snap):
    doc = to_dict(snap, Query(form="columns"))
    doc["hotness"]["targets"][0]["region_columns"]["lru"] = ["anon"]
    with pytest.raises(snapshot_json.SchemaError, match=r"targets\[0\]\.region_columns\.lru"):
        snapshot_json.from_dict(doc)


def test_client_asks_for_columns_and_an_older_daemon_again_without(snap, tmp_path, monkeypatch):
    from mglrud import client

    asked = []
    real = snapshot_json.parse_query

    def older(qs):  # a daemon from before ?form=: 400 on the unknown parameter
        asked.append(qs)
        if "form=" in qs:
            raise ValueError("unknown parameter 'form'; /snapshot.json takes target, pid, offset, limit")
        return real(qs)

    sock = str(tmp_path / "s.sock")
    srv, _ = mhttp.serve(sock, 0, Published(snap))
    try:
        monkeypatch.setattr(snapshot_json, "parse_query", older)
        doc = client.fetch_snapshot(f"unix:{sock}", pid=META["pid"])
        assert asked == [f"pid={META['pid']}&form=columns", f"pid={META['pid']}"]
        monkeypatch.setattr(snapshot_json, "parse_query", real)
        assert client.fetch_snapshot(f"unix:{sock}", pid=META["pid"]) == doc  # read from the columns
        assert doc.regions() == snapshot_json.from_dict(to_dict(snap)).regions(pid=META["pid"]) != {}
    finally:
        srv.shutdown()
        srv.server_close()


def test_found_keeps_the_newest_finds_of_each_cell(snap):
    # found=N: what heatmap (1) and report (0) read of a cell's finds; found_in is not cut
    whole = snapshot_json.from_dict(to_dict(snap)).regions(pid=META["pid"])
    assert max(len(r.found) for rs in whole.values() for r in rs) > 1, "the replay's cells were found more than once"
    for n in (0, 1, 2):
        for form in ("rows", "columns"):
            got = snapshot_json.from_dict(json.loads(to_json(snap, Query(pid=META["pid"], form=form, found=n))))
            assert got.regions() == {k: [dataclasses.replace(r, found=r.found[:n]) for r in rs]
                                     for k, rs in whole.items()}
    assert parse_query("found=1") == Query(found=1)


def test_heatmap_and_report_ask_for_what_they_read(snap, tmp_path, monkeypatch):
    from mglrud import client
    from mglrud.tui import feeds

    asked = []
    real = snapshot_json.parse_query
    monkeypatch.setattr(snapshot_json, "parse_query", lambda qs: asked.append(qs) or real(qs))
    sock = str(tmp_path / "s.sock")
    srv, _ = mhttp.serve(sock, 0, Published(snap))
    try:
        feeds.DaemonFeed(f"unix:{sock}", None, META["pid"]).poll()
        monkeypatch.setattr(client, "default_url", lambda url: f"unix:{sock}")
        import argparse
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            client.report_main(argparse.Namespace(url=None, target=None, pid=META["pid"], maps=False, wide=False))
        assert asked[0] == f"pid={META['pid']}&form=columns&found=1"
        assert asked[1] == f"pid={META['pid']}&form=columns&found=0"
    finally:
        srv.shutdown()
        srv.server_close()
