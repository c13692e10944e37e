"""What an unauthenticated TCP client may see: a Snapshot without addresses or file names.

mglrud runs as root and reads /proc/PID/smaps and pagemap of other users'
processes, which the kernel shows only to who may ptrace them
(Documentation/filesystems/proc.rst; /proc/PID/maps is PTRACE_MODE_READ): the
addresses in them break ASLR, and the file names tell what a process has mapped.
So the address-level view (mapping addresses and file names, BPF regions and
the address ranges of the heat buckets) is served only where the client is known:

- on the unix socket (`listen.socket`, /run/mglrud/mglrud.sock in the shipped
  config: directory 0700 and socket 0600, owned by root, so only root can
  connect), which `mglrud report` and `mglrud heatmap` use when it exists;
- over TCP to a client the web config authenticates (basic auth users, or
  client certificates with `RequireAndVerifyClientCert`; docs/security.md).

Everyone else reaching the TCP port (any local user, on the default
127.0.0.1:9746 without a web config) gets `redact(snapshot)`: per target, comm
and mapping *class* the same sizes and access figures the metrics carry, no
address, no path, no per-region cell. What stays is what /proc gives any user
anyway or what mglrud aggregates: pids, comms, cgroup paths, per-process totals.
"""

from __future__ import annotations

import dataclasses

from mglrud.model import Snapshot

# Names the kernel gives (fs/proc/task_mmu.c show_map_vma()): no secret in them.
KERNEL_NAMES = frozenset({"[anon]", "[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]",
                          "[uprobes]"})
SHMEM_PREFIXES = ("/dev/shm/", "/SYSV", "/dev/zero")


def mapping_class(name: str) -> str:
    """A mapping's name as an unauthenticated client sees it: kernel names kept; a name a
    process chose ([anon:NAME], memfd:NAME) or a path becomes its kind."""
    if name in KERNEL_NAMES:
        return name
    if name.startswith("[anon"):
        return "[anon]"
    if name.startswith("/memfd:"):
        return "[memfd]"
    if name.startswith(SHMEM_PREFIXES):
        return "[shmem]"
    if name.startswith("[stack"):
        return "[stack]"
    return "[file]"


def redact(snap: Snapshot) -> Snapshot:
    """The snapshot without addresses or file names (see the module docstring): /proc
    mappings get their class for a name and address 0 (so the metrics group them by
    class); `redacted` tells snapshot_json to leave out addresses and the BPF source's
    per-region cells and bucket ranges. The BPF metrics are sums per target, node and
    lru, with no address in them, and are computed from the regions as before."""
    out: dict = {"redacted": True}
    if snap.procfs is not None:
        procs = tuple(dataclasses.replace(p, mappings=tuple(
            dataclasses.replace(m, start=0, end=0, name=mapping_class(m.name)) for m in p.mappings))
            for p in snap.procfs.processes)
        out["procfs"] = dataclasses.replace(snap.procfs, processes=procs)
    return dataclasses.replace(snap, **out)


class RedactedView:
    """A Published whose `current` is the redacted latest snapshot, made once per snapshot
    (and so cached by identity like the full one: exposition.RenderCache keys on it)."""

    def __init__(self, published):
        self.published = published
        self._source = None
        self._redacted = None

    @property
    def current(self):
        snap = self.published.current
        if snap is None:
            return None
        pair = (self._source, self._redacted)
        if pair[0] is not snap:
            pair = (snap, redact(snap))
            self._source, self._redacted = pair  # two threads may both redact once; either result is right
        return pair[1]
