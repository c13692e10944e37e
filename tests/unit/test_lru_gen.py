"""sources/lru_gen.py: parse() on captured kernel output, age() through a recording writer."""

import errno

import pytest

from conftest import captured_lru_gen_files, captured_roots
from mglrud.fs import FileWriter, RecordingWriter, RefusedCommand
from mglrud.model.lru_gen import GenHistogram, Generation, cold_pages
from mglrud.sources import lru_gen
from synth import lru_gen_text

CAPTURED = captured_lru_gen_files()


# ---------------------------------------------------------------- captured fixtures

def _independent_read(text: str) -> dict:
    """A second, deliberately naive reading of the format to compare against:
    (memcg_id, node) -> [(seq, age_ms, anon, file)]."""
    out, memcg, node = {}, None, None
    for line in text.splitlines():
        w = line.split()
        if w and w[0] == "memcg":
            memcg = int(w[1])
        elif w and w[0] == "node":
            node = int(w[1])
            out[(memcg, node)] = []
        elif len(w) == 4 and w[0].isdigit() and w[1].isdigit():
            out[(memcg, node)].append(tuple(int(x.rstrip("x")) for x in w))
    return out


@pytest.mark.skipif(not CAPTURED, reason="no captured lru_gen fixtures in tests/fixtures yet")
@pytest.mark.parametrize("path", CAPTURED, ids=[str(p.relative_to(p.parents[2])) for p in CAPTURED] or None)
def test_parse_captured(path):
    text = path.read_text()
    hists = lru_gen.parse(text)
    assert hists, "a capture always lists at least the root memcg"
    expected = _independent_read(text)
    got = {(h.memcg_id, h.node): [(g.seq, round(g.age_seconds * 1000), g.anon_pages, g.file_pages)
                                  for g in h.generations] for h in hists}
    assert got == {k: list(v) for k, v in expected.items()}
    for h in hists:
        assert h.memcg_path.startswith("/")
        seqs = [g.seq for g in h.generations]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "generations are consecutive"
        # lru_gen lists from min_seq; lru_gen_full always shows MAX_NR_GENS (4).
        assert 1 <= len(h.generations) <= 4
        ages = [g.age_seconds for g in h.generations]
        assert ages == sorted(ages, reverse=True), "older generations are older"
    # Every memcg is listed on every node with memory, the same set each time.
    nodes = {}
    for h in hists:
        nodes.setdefault(h.memcg_id, set()).add(h.node)
    assert len({frozenset(n) for n in nodes.values()}) == 1


@pytest.mark.skipif(not CAPTURED, reason="no captured lru_gen fixtures in tests/fixtures yet")
def test_captured_root_memcg_is_first():
    for path in CAPTURED:
        first = lru_gen.parse(path.read_text())[0]
        assert first.memcg_path == "/", path


# ---------------------------------------------------------------- format edge cases (synthetic)

def test_parse_path_with_spaces_and_two_nodes():
    text = lru_gen_text([
        (1, "/", [(0, [(4, 9000, 10, 20), (5, 10, 1, 2)]), (1, [(7, 8000, 3, 4), (8, 5, 5, 6)])]),
        (12, "/a b/c d", [(0, [(3, 1500, 100, 0)]), (1, [(3, 1500, 0, 7)])]),
    ])
    hists = lru_gen.parse(text)
    assert [(h.memcg_id, h.memcg_path, h.node, h.max_seq) for h in hists] == [
        (1, "/", 0, 5), (1, "/", 1, 8), (12, "/a b/c d", 0, 3), (12, "/a b/c d", 1, 3)]
    assert hists[0].generations == (Generation(4, 9.0, 10, 20), Generation(5, 0.01, 1, 2))


def test_parse_full_format_skips_stats_and_reads_marks():
    # Lines as lru_gen_seq_show_full() prints them: tiers, then mm-walk stats.
    text = ("memcg     1 /\n node     0\n"
            "          0      40000          0x          0x\n"
            "                    0          0r          0e          0p          0r          0e          0p\n"
            "                      0t          0y          0f          0a\n"
            "          3       1000         12          34 \n"
            "                    0          5R          9T          0x          1R          2T          0x\n"
            "                      1T          2Y          3F          4A\n")
    (h,) = lru_gen.parse(text)
    assert [(g.seq, g.anon_pages, g.file_pages) for g in h.generations] == [(0, 0, 0), (3, 12, 34)]


def test_memcg_disabled_root_has_empty_path():
    (h,) = lru_gen.parse("memcg     0 \n node     0\n          3        100          1           2 \n")
    assert h.memcg_path == "/"


@pytest.mark.parametrize("text,message", [
    (" node     0\n", "line 1: node before any memcg line"),
    ("memcg     1 /\n          3        100          1           2 \n", "line 2: generation before any node line"),
    ("memcg     1 /\n node     0\n", "memcg 1 node 0 has no generations"),
    ("memcg     1 /\n node     0\n          3  1  1  1\n          3  1  1  1\n", "line 4: generation 3 after 3"),
    ("memcg     1 /\n node     0\nhello\n", "line 3: unexpected 'hello'"),
    ("+ 1 0 3 1 1\n", "line 1: unexpected '+ 1 0 3 1 1'"),
])
def test_parse_errors(text, message):
    with pytest.raises(lru_gen.ParseError, match="^" + message.replace("+", r"\+") + "$"):
        lru_gen.parse(text)


def test_read_missing_debugfs_says_what_to_do(tmp_path):
    from mglrud.config import Paths
    from mglrud.fs import FS
    with pytest.raises(lru_gen.Unavailable) as e:
        lru_gen.read(FS(Paths(debugfs=str(tmp_path))))
    assert e.value.reason == "no_debugfs"
    assert "mount -t debugfs none" in str(e.value)


def test_a_memcg_name_that_is_not_utf8_is_read_with_its_bytes_escaped(tmp_path):
    """A tenant with a delegated cgroup can name a child with any bytes but '/': that memcg's path
    shows its bytes escaped and every cycle goes on (review; seen failing: UnicodeDecodeError out
    of read(), every cycle kept the previous snapshot)."""
    from mglrud.config import Paths
    from mglrud.fs import FS
    (tmp_path / "lru_gen").write_bytes(
        b"memcg     1 /\n node     0\n          0       1000       10       20\n"
        b"memcg     2 /t\xffx\n node     0\n          0       1000       30       40\n")
    lruvecs = lru_gen.read(FS(Paths(debugfs=str(tmp_path))))
    assert [h.memcg_path for h in lruvecs] == ["/", "/t\\xffx"]


# ---------------------------------------------------------------- aging

H = GenHistogram(7, "/svc", 0, (Generation(10, 3.0, 1, 1), Generation(12, 0.5, 1, 1)))
H1 = GenHistogram(7, "/svc", 1, (Generation(20, 3.0, 1, 1),))


def _never():
    raise AssertionError("no re-read expected")


def test_aging_command_exact():
    assert lru_gen.aging_command(7, 0, 12, True, True) == "+ 7 0 12 1 1"
    assert lru_gen.aging_command(65535, 3, 2**40, False, False) == "+ 65535 3 1099511627776 0 0"


def test_age_writes_exact_command():
    w = RecordingWriter()
    r = lru_gen.age(H, w, _never, can_swap=True, force_scan=False)
    assert w.commands == ["+ 7 0 12 1 0"]
    assert r.ok and r.reason == "" and r.commands == ("+ 7 0 12 1 0",)


def test_stale_seq_rereads_and_retries_once():
    w = RecordingWriter(fail={"+ 7 0 12 1 1": [errno.EINVAL]})
    fresh = GenHistogram(7, "/svc", 0, (Generation(12, 3.0, 1, 1), Generation(13, 0.1, 1, 1)))
    r = lru_gen.age(H, w, lambda: (H1, fresh), True, True)
    assert w.commands == ["+ 7 0 12 1 1", "+ 7 0 13 1 1"]
    assert r.ok


def test_einval_twice_is_counted_not_raised():
    w = RecordingWriter(fail={"+ 7 0 12 1 1": [errno.EINVAL, errno.EINVAL]})
    r = lru_gen.age(H, w, lambda: (H,), True, True)
    assert w.commands == ["+ 7 0 12 1 1", "+ 7 0 12 1 1"]
    assert r.reason == "einval"


def test_memcg_gone_after_einval():
    w = RecordingWriter(fail={"+ 7 0 12 1 1": [errno.EINVAL]})
    r = lru_gen.age(H, w, lambda: (), True, True)
    assert (w.commands, r.reason) == (["+ 7 0 12 1 1"], "memcg_gone")


def test_reused_id_is_not_retried():
    """The kernel reuses memcg ids: same id, other path, is another memcg."""
    w = RecordingWriter(fail={"+ 7 0 12 1 1": [errno.EINVAL]})
    other = GenHistogram(7, "/new", 0, (Generation(3, 0.0, 0, 0),))
    r = lru_gen.age(H, w, lambda: (other,), True, True)
    assert (w.commands, r.reason) == (["+ 7 0 12 1 1"], "memcg_gone")


@pytest.mark.parametrize("code,reason", [(errno.ERANGE, "erange"), (errno.ENOENT, "enoent"),
                                         (errno.EPERM, "eperm"), (errno.EACCES, "eperm"), (errno.EIO, "other")])
def test_errors_are_reasons(code, reason):
    w = RecordingWriter(fail={"+ 7 0 12 1 1": [code]})
    r = lru_gen.age(H, w, _never, True, True)
    assert (r.ok, r.reason, w.commands) == (False, reason, ["+ 7 0 12 1 1"])


@pytest.mark.parametrize("cmd", ["- 7 0 10", "- 7 0 10 0 100", "+ 7 0 12", "+ 7 0 12 1 1; - 7 0 10",
                                 "+ 7 0 12 1 1\n- 7 0 10", " - 7 0 10 1 1", "+ 7 0 12 2 1"])
def test_writers_refuse_anything_but_aging(tmp_path, cmd):
    target = tmp_path / "lru_gen"
    target.write_text("")
    for w in (RecordingWriter(), FileWriter(target)):
        with pytest.raises(RefusedCommand):
            w.write(cmd)
    assert target.read_text() == ""


def test_file_writer_writes_exact_bytes(tmp_path):
    target = tmp_path / "lru_gen"
    target.write_text("")  # debugfs files report size 0, like this one
    FileWriter(target).write("+ 7 0 12 1 1")
    assert target.read_text() == "+ 7 0 12 1 1"


def test_file_writer_refuses_to_clobber_a_copy(tmp_path):
    """A fixture tree's lru_gen (a regular file with content) is never written."""
    target = tmp_path / "lru_gen"
    target.write_text("memcg     1 /\n")
    with pytest.raises(OSError):
        FileWriter(target).write("+ 1 0 3 1 1")
    assert target.read_text() == "memcg     1 /\n"
    r = lru_gen.age(GenHistogram(1, "/", 0, (Generation(3, 0, 0, 0),)), FileWriter(target), _never, True, True)
    assert r.reason == "other"


def test_lru_gen_vanishing_before_the_write_is_enoent(tmp_path):
    r = lru_gen.age(H, FileWriter(tmp_path / "lru_gen"), _never, True, True)
    assert r.reason == "enoent"


# ---------------------------------------------------------------- what the captures say

ROOTS = [r for r in captured_roots()
         if "hot" in (r / "CAPTURED").read_text() and "cold" in (r / "CAPTURED").read_text()]


@pytest.mark.skipif(not ROOTS, reason="no captured fixture roots with hot and cold workloads yet")
@pytest.mark.parametrize("root", ROOTS, ids=[r.name for r in ROOTS] or None)
def test_captured_hot_and_cold_memcgs(root):
    """capture_fixtures.py aged every 2 s: the memcg touched once is cold at 2 s, the looping one is not."""
    hists = lru_gen.parse((root / "debugfs/lru_gen").read_text())

    def share(path):
        hs = [h for h in hists if h.memcg_path == path]
        resident = sum(h.pages("anon") for h in hs)
        return sum(cold_pages(h, "anon", 2.0) for h in hs) / resident, resident

    cold, cold_resident = share("/mglrud-fixture/cold")
    hot, hot_resident = share("/mglrud-fixture/hot")
    assert cold_resident * 4096 >= 90 << 20 and hot_resident * 4096 >= 60 << 20
    assert cold >= 0.9
    assert hot <= 0.1


# ---------------------------------------------------------------- the read after aging (reparse)

@pytest.mark.skipif(not CAPTURED, reason="no captured lru_gen fixtures in tests/fixtures yet")
@pytest.mark.parametrize("path", CAPTURED, ids=[str(p.relative_to(p.parents[2])) for p in CAPTURED] or None)
def test_reparse_of_an_unchanged_read_is_parse(path):
    text = path.read_text()
    whole = lru_gen.parse(text)
    paths = sorted({h.memcg_path for h in whole})
    for fresh in (set(), set(paths[:1]), set(paths[::3]), set(paths)):
        assert lru_gen.reparse(text, whole, fresh) == whole, fresh


def _g(seq, age_ms=1000, anon=1, file=2):
    return (seq, age_ms, anon, file)


def test_reparse_parses_the_aged_and_the_new_and_keeps_the_others_from_the_read_before():
    before = lru_gen_text([
        (1, "/", [(0, [_g(4), _g(5)])]),
        (7, "/aged", [(0, [_g(3), _g(4)]), (1, [_g(3), _g(4)])]),
        (8, "/idle", [(0, [_g(9, 5000), _g(10, 4000)])]),
        (9, "/gone", [(0, [_g(1)])]),
        (10, "/reused-id", [(0, [_g(1)])]),
        (11, "/other", [(0, [_g(2)])]),
        (12, "/more", [(0, [_g(2)])]),
    ])
    after = lru_gen_text([
        (1, "/", [(0, [_g(4, 1001), _g(5, 2)])]),
        (7, "/aged", [(0, [_g(3), _g(4), _g(5, 0, 9, 9)]), (1, [_g(3), _g(4), _g(5, 0)])]),
        (8, "/idle", [(0, [_g(9, 5009), _g(10, 4009)])]),  # a moment later: kept from `before`
        (14, "/reused-id", [(0, [_g(1, 7)])]),  # the same path under another id: another memcg
        (13, "/new", [(0, [_g(1)])]),
        (11, "/other", [(0, [_g(2, 3)])]),
        (12, "/more", [(0, [_g(2, 3)])]),
    ])
    previous = lru_gen.parse(before)
    got = lru_gen.reparse(after, previous, {"/aged"})
    fresh = {(h.memcg_path, h.node): h for h in lru_gen.parse(after)}
    old = {(h.memcg_path, h.node): h for h in previous}
    assert [(h.memcg_id, h.memcg_path, h.node) for h in got] == [
        (1, "/", 0), (7, "/aged", 0), (7, "/aged", 1), (8, "/idle", 0), (14, "/reused-id", 0), (13, "/new", 0),
        (11, "/other", 0), (12, "/more", 0)]
    by = {(h.memcg_path, h.node): h for h in got}
    for key in [("/aged", 0), ("/aged", 1), ("/reused-id", 0), ("/new", 0)]:
        assert by[key] == fresh[key], key
    for key in [("/", 0), ("/idle", 0), ("/other", 0), ("/more", 0)]:
        assert by[key] is old[key] and by[key] != fresh[key], key
    assert by[("/aged", 0)].max_seq == 5
    # most memcgs aged, or a line break parse() reads differently: the whole text is parsed
    assert lru_gen.reparse(after, previous, {"/aged", "/", "/idle", "/other"}) == lru_gen.parse(after)
    cr = after.replace("/more\n", "/mo\rre\n")  # splitlines() breaks the line: "re" is no lru_gen line
    for f in (lambda: lru_gen.parse(cr), lambda: lru_gen.reparse(cr, previous, {"/aged"})):
        with pytest.raises(lru_gen.ParseError, match="unexpected 're'"):
            f()


def test_reparse_parses_dying_twins_listed_under_one_id_and_path():
    twins = [(0, "/dying", [(0, [_g(1, 100)])]), (0, "/dying", [(0, [_g(3, 100)])])]
    before = lru_gen_text([(1, "/", [(0, [_g(4)])])] + twins + [(2, "/a", [(0, [_g(1)])]), (3, "/b", [(0, [_g(1)])])])
    after = before.replace("        100", "        900")
    got = lru_gen.reparse(after, lru_gen.parse(before), {"/a"})
    assert [g.age_seconds for h in got if h.memcg_path == "/dying" for g in h.generations] == [0.9, 0.9]
    assert [h.memcg_path for h in got] == ["/", "/dying", "/dying", "/a", "/b"]


@pytest.mark.parametrize("header,memcg_id,path", [
    ("memcg     1 /", 1, "/"),
    ("memcg     1 ", 1, "/"),  # memcg disabled: the root has no path
    ("memcg     1", 1, "/"),
    ("memcg 12345  /a b", 12345, " /a b"),  # one space after the id; the rest is the path
    ("memcg 65535 /x/y", 65535, "/x/y"),
])
def test_memcg_lines_read_as_the_format_says(header, memcg_id, path):
    (h,) = lru_gen.parse(header + "\n node     0\n          3        100          1           2 \n")
    assert (h.memcg_id, h.memcg_path) == (memcg_id, path)


def test_a_memcg_line_with_a_tab_is_not_one():
    with pytest.raises(lru_gen.ParseError, match="line 1: unexpected"):
        lru_gen.parse("memcg\t1 /x\n node     0\n          3        100          1           2 \n")


def _fleet(n: int, aged: set[str], later_ms: int) -> str:
    """n memcgs on two nodes; `aged` ones have one generation more; every age `later_ms` later."""
    rows = []
    for i in range(n):
        path = f"/system.slice/s{i}.service" if i % 2 else f"/kubepods.slice/pod{i}/ctr"
        extra = [_g(8, 0, 7 + i, 3)] if path in aged else []
        rows.append((i + 2, path, [(node, [_g(4 + g, 4000 - 1000 * g + later_ms, i + g, node + g) for g in range(4)] + extra)
                                   for node in (0, 1)]))
    return lru_gen_text(rows)


def test_reparse_of_the_same_memcgs_splices_the_aged_into_the_read_before():
    """The common case (the same memcgs as the read before, in its order) takes _splice():
    its result is the general way's, the kept lruvecs are the read before's own objects."""
    paths = [h.memcg_path for h in lru_gen.parse(_fleet(40, set(), 0))][::2]
    for aged in (set(), {paths[0]}, {paths[-1]}, set(paths[3:9]), set(paths[::6])):
        previous = lru_gen.parse(_fleet(40, set(), 0))
        after = _fleet(40, aged, 5)
        sections = after[len("memcg "):].split("\nmemcg ")
        spliced = lru_gen._splice(sections, previous, aged)
        assert spliced is not None, aged
        assert spliced == lru_gen._reparse(after, sections, previous, aged) == lru_gen.reparse(after, previous, aged)
        fresh = {(h.memcg_path, h.node): h for h in lru_gen.parse(after)}
        old = {(h.memcg_path, h.node): h for h in previous}
        assert [(h.memcg_path, h.node) for h in spliced] == list(fresh)
        for h in spliced:
            key = (h.memcg_path, h.node)
            if h.memcg_path in aged:
                assert h == fresh[key] and h.max_seq == 8, key
            else:
                assert h is old[key] and h != fresh[key], key


def test_reparse_takes_the_general_way_when_the_memcgs_differ_from_the_read_before():
    previous = lru_gen.parse(_fleet(10, set(), 0))
    aged = {"/kubepods.slice/pod0/ctr"}
    for after in (_fleet(10, aged, 5).replace("memcg     5 ", "memcg    55 "),  # an id reused for the same path
                  _fleet(9, aged, 5),  # one memcg gone
                  _fleet(11, aged, 5),  # one new
                  _fleet(10, aged, 5).replace("memcg     3 ", "memcg 3 ")):  # a header not as the kernel prints it
        sections = after[len("memcg "):].split("\nmemcg ")
        assert lru_gen._splice(sections, previous, aged) is None
        got = lru_gen.reparse(after, previous, aged)
        assert got == lru_gen._reparse(after, sections, previous, aged)
        assert [(h.memcg_id, h.memcg_path, h.node) for h in got] == \
            [(h.memcg_id, h.memcg_path, h.node) for h in lru_gen.parse(after)]
