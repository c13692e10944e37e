"""The typed reader of /snapshot.json (snapshot_json.from_dict): every field the daemon writes is read,
nothing is lost on the way (a round trip gives the same JSON), and a document that is not a snapshot
is refused with the field named."""

import dataclasses
import json
import pytest

from fixture_snapshots import lru_gen_snapshot, procfs_snapshot
from mglrud import snapshot_json
from mglrud.model import Snapshot
from tests.bpf_replay import replayed_snapshot



def round_trip(doc: dict) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(snapshot_json.from_dict(doc))))


@pytest.mark.parametrize("name", ["vm-1node", "vm-2node"])
def test_lru_gen_snapshots_round_trip(name):
    doc = lru_gen_snapshot(name)
    assert round_trip(doc) == doc


def test_procfs_part_round_trips():
    doc = {**json.loads(json.dumps(snapshot_json.to_dict(Snapshot(1.0, 4096, (30.0,), (30.0,))))),
           "procfs": procfs_snapshot()}
    assert round_trip(doc) == doc
    read = snapshot_json.from_dict(doc)
    assert read.procfs.processes[0].mappings[0].lo == int(doc["procfs"]["processes"][0]["mappings"][0]["start"], 16)


def test_bpf_part_round_trips(tmp_path):
    snap, _ = replayed_snapshot(tmp_path)
    doc = json.loads(snapshot_json.to_json(snap))
    regions = [r for t in doc["hotness"]["targets"] for r in t["regions"]]
    assert regions and all(r["found"] is not None for r in regions), "the replay gave no regions to read"
    assert round_trip(doc) == doc
    read = snapshot_json.from_dict(doc)
    assert sum(len(rs) for rs in read.regions().values()) == len(regions)


@pytest.mark.parametrize("doc, where", [
    ({"procfs": {"processes": [{"pid": 1}]}}, "snapshot.procfs.processes[0]: no field 'comm'"),
    ({"sources": {"name": "x"}}, "snapshot.sources: expected a list, got dict"),
    ({"hotness": [1]}, "snapshot.hotness: expected an object, got list"),
])
def test_not_a_snapshot_names_the_field(doc, where):
    with pytest.raises(snapshot_json.SchemaError, match=f"^{where.replace('[', '.').replace(']', '.')}"):
        snapshot_json.from_dict(doc)
