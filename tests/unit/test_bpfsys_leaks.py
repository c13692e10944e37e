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
