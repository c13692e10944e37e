"""bench/bracket's libbpf (ctypes) loader: its one-line errors before anything reaches the kernel
(a missing object, libbpf absent), and the node pfn ranges it hands the program from /proc/zoneinfo.
Nothing here opens or loads a BPF object: that happens in the stock guest (bench/bracket/cost.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "bracket"))

import libbpf_ctypes  # noqa: E402


def test_a_missing_object_says_how_to_build_it(tmp_path):
    with pytest.raises(libbpf_ctypes.LibbpfError) as e:
        libbpf_ctypes.Object(str(tmp_path / "count.o"))
    msg = str(e.value)
    assert "\n" not in msg and "count.o: no such BPF object" in msg and "bench/bracket/Makefile" in msg


def test_libbpf_absent_says_which_package(tmp_path):
    obj = tmp_path / "count.o"
    obj.write_bytes(b"\x7fELF")
    with pytest.raises(libbpf_ctypes.LibbpfError) as e:
        libbpf_ctypes.Object(str(obj), lib="libbpf-absent.so.9")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("libbpf-absent.so.9 not loadable") and "libbpf1" in msg


ZONEINFO = """Node 0, zone      DMA
  pages free     3840
        spanned  4095
        present  3998
  start_pfn:           1
Node 0, zone    DMA32
  pages free     100
        spanned  258048
  start_pfn:           4096
Node 0, zone   Normal
        spanned  0
  start_pfn:           0
Node 1, zone   Normal
        spanned  262144
  start_pfn:           262144
"""


def test_node_ranges_from_zoneinfo():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "vm"))
    from cost import node_ranges

    # node 0 spans DMA and DMA32 (its empty Normal zone left out), node 1 its own range
    assert node_ranges(ZONEINFO) == [(1, 262144, 0), (262144, 524288, 1)]


def test_node_ranges_are_in_pfn_order_not_node_order():
    """The per-table mode splits a table's pages at each next range's start pfn: a node whose
    memory lies below node 0's must come first (review finding: they were sorted by node)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "vm"))
    from cost import node_ranges

    swapped = ZONEINFO.replace("Node 0,", "Node X,").replace("Node 1,", "Node 0,").replace("Node X,", "Node 1,")
    assert node_ranges(swapped) == [(1, 262144, 1), (262144, 524288, 0)]
