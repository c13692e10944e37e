"""YAML configuration -> validated, frozen objects.

Every error is a ConfigError naming the dotted key that is wrong
(`targets[1].memcg`) and what is wrong with it; unknown keys are errors, so a
typo never silently falls back to a default. Built-in defaults make the file
optional. config.example.yaml documents every key; docs/config.md is the
reference.
"""

from mglrud.config.schema import (DEFAULT_PORT, DEFAULT_TARGETS, DEFAULT_URL, LOG_LEVELS, MAX_NR_GENS,
                                  MAX_TARGETS, MIN_DURATION, MIN_INTERVAL, SELECTORS, UNIT_SUFFIXES, Aging, Bpf,
                                  Config, Listen, Metrics, Paths, Procfs, Target)
from mglrud.config.sections import TOP_KEYS, from_dict, listen_address, load, loads, parse_size
from mglrud.config.values import (ConfigError, escape, format_duration, memcg_glob, memcg_matches,
                                  parse_duration)

__all__ = [
    "Aging", "Bpf", "Config", "ConfigError", "DEFAULT_PORT", "DEFAULT_TARGETS", "DEFAULT_URL", "LOG_LEVELS",
    "Listen", "MAX_NR_GENS", "MAX_TARGETS", "MIN_DURATION", "MIN_INTERVAL", "Metrics", "Paths", "Procfs",
    "SELECTORS", "TOP_KEYS", "Target", "UNIT_SUFFIXES", "escape", "format_duration", "from_dict",
    "listen_address", "load", "loads", "memcg_glob", "memcg_matches", "parse_duration", "parse_size"
]
