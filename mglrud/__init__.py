"""mglrud: ages memory cgroups through the kernel's multi-gen LRU and exports what it sees.

Data flows kernel -> source (mglrud/sources) -> immutable Snapshot (mglrud/model)
-> collectors (mglrud/collectors) rendered on scrape.
"""

__version__ = "0.2.0"
