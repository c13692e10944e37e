"""What every source is: the Source protocol, its probe, and what one cycle hands it.

A source wraps one kernel interface and turns it into its part of the Snapshot.
The Engine (mglrud/cycle.py) knows sources only through this protocol and the
table in sources/__init__.py; it reads what several sources share once per
cycle (the /proc process table, lru_gen's generations) into `Inputs`, ages,
and assembles the parts the sources return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from mglrud.config import Config
from mglrud.fs import FS
from mglrud.model import SourceStatus
from mglrud.model.lru_gen import GenHistogram


@dataclass(frozen=True)
class Probe:
    name: str
    usable: bool
    detail: str  # what was found, or why it cannot be used, as a sentence


@dataclass(frozen=True)
class Inputs:
    """What one cycle read once for every source. `lruvecs` and `index` are lru_gen's
    after aging (empty when lru_gen is not used or cannot be read)."""

    config: Config
    fs: FS
    procs: object  # targets.ProcTable: the cycle's one /proc scan, made when first asked for
    lruvecs: tuple[GenHistogram, ...]
    index: dict[str, int]  # memcg path -> id, from the same lru_gen read
    owner: dict[str, object]  # memcg path -> the Target it is aged for
    age: bool  # False: only read (the daemon's first cycle, `snapshot --no-age`)
    age_all: bool  # every target is due now (`mglrud snapshot`)


@dataclass(frozen=True)
class Part:
    """A source's contribution to one Snapshot."""

    statuses: tuple[SourceStatus, ...] = ()
    data: dict = field(default_factory=dict)  # Snapshot fields this source fills, e.g. {"procfs": ProcfsData}
    notes: tuple[tuple[str, str], ...] = ()  # (what, problem) to log when it appears or changes; "" when fine


class Source(Protocol):
    """One data source. A source whose start is slow (a compile) may have an `in_loop` attribute:
    the Engine sets it True on a source it makes after its first configure, i.e. on a reload
    inside the daemon's loop, where a start must not hold the loop (nor its watchdog pings)."""

    name: str

    def configure(self, config: Config, probe: Probe, why: str) -> None:
        """Take the (new) config and what the probe found; `why` is the selection's reason for it."""

    def due_in(self) -> float:
        """Seconds until this source wants a cycle of its own (inf: only when the Engine runs one)."""

    def reschedule(self, within: float) -> None:
        """Whatever is scheduled later than `within` seconds from now becomes due by then."""

    def before_aging(self, inputs: Inputs) -> None:
        """Called before the cycle ages anything: what must be in place for the aging to be seen."""

    def part(self, inputs: Inputs) -> Part:
        """Read, after aging; never raises for a kernel condition (report it in a status)."""

    def close(self) -> None:
        """Release what the source holds (BPF programs, descriptors)."""


@dataclass(frozen=True)
class Entry:
    """One line of the source table. `sources: auto` runs a usable source unless:
    `needs` names a source it can only run beside (BPF counts what lru_gen's aging finds),
    or `instead_of` names one it must not run beside, with `instead_why` saying why."""

    name: str
    probe: Callable[[FS], Probe]
    make: Callable[[Config, FS, Callable[[], float], Callable[[], float]], Source]  # (config, fs, clock, wall)
    needs: str = ""
    instead_of: str = ""
    instead_why: str = ""


class Passive:
    """Defaults for sources that have no schedule of their own and nothing to do before aging."""

    def due_in(self) -> float:
        return float("inf")

    def reschedule(self, within: float) -> None:
        pass

    def before_aging(self, inputs: Inputs) -> None:
        pass

    def close(self) -> None:
        pass
