"""mglrud/bpfsys.py leaves no file open behind it (issue 18, item 13: possible_cpus() leaked its handle)."""

import gc
import warnings

from mglrud import bpfsys


def test_possible_cpus_closes_the_file(tmp_path):
    (tmp_path / "possible").write_text("0-3,8-11\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bpfsys.possible_cpus(str(tmp_path / "possible")) == 12
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_batches_fall_back_to_a_lookup_per_key_and_items_slice_them():
    # a kernel without BPF_MAP_LOOKUP_BATCH for the map (EINVAL on the first call): one chunk from
    # keys() and lookup(); items() is the same entries one (key, value) each
    import errno

    class Map(bpfsys.Map):
        def __init__(self):
            self.fd, self.key_size, self.value_size, self.max_entries = -1, 4, 8, 16
            self.percpu, self.ncpus, self.slot, self._batch = True, 2, 8, True
            self.table = {bytes([i, 0, 0, 0]): bytes(range(i, i + 16)) for i in range(5)}

        def _batches(self):
            raise bpfsys.BpfError(errno.EINVAL, "Invalid argument")
            yield  # a generator, as the real one

        def keys(self):
            return list(self.table)

        def lookup(self, key):
            return self.table.get(key)

    m = Map()
    assert list(m.batches()) == [(b"".join(m.table), b"".join(m.table.values()), 5)]
    assert m._batch is False  # not asked again
    assert m.items() == list(m.table.items())
