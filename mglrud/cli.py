"""Command line: `mglrud run | check | snapshot | report | heatmap`. main() returns the exit status.

Exit status: 0 ok, 1 the machine cannot do it (check failed, port taken,
a chosen source down for snapshot), 2 bad usage or bad config. Errors a user can
fix are printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from mglrud import __version__, check, client, report, systemd, tui
from mglrud.config import DEFAULT_PORT, Config, ConfigError, escape, listen_address, load
from mglrud.fs import FS

PATH_FLAGS = ("procfs", "sysfs", "debugfs", "cgroupfs", "tracefs")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
    for name in PATH_FLAGS:
        common.add_argument(f"--path.{name}", dest=f"path_{name}", metavar="DIR",
                            help=f"where {name} is mounted (overrides paths.{name})")
    common.add_argument("--log.level", dest="log_level", choices=("debug", "info", "warning", "error"),
                        help="overrides log.level")

    p = argparse.ArgumentParser(prog="mglrud", description="Age memcgs through the multi-gen LRU and "
                                                           "export their generations to Prometheus.")
    p.add_argument("--version", action="version", version=f"mglrud {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the daemon: age on schedule, serve /metrics")
    run.add_argument("--listen.address", dest="listen_address", metavar="ADDR",
                     help="overrides listen.address (default 127.0.0.1)")
    run.add_argument("--listen.port", dest="listen_port", type=int, metavar="PORT",
                     help=f"overrides listen.port (default {DEFAULT_PORT}; 0 picks a free port)")
    sub.add_parser("check", parents=[common], help="preflight: what works here and why not; exit 0/1")
    snap = sub.add_parser("snapshot", parents=[common], help="run one cycle and print it")
    snap.add_argument("--json", action="store_true", help="print the JSON of /snapshot.json")
    snap.add_argument("--no-age", action="store_true", help="only read; do not age the targets first")
    client.add_report_parser(sub)  # reads a running daemon: no config, no kernel access
    tui.add_parser(sub)  # a daemon's snapshots, or its own session of the daemon's cycle
    return p


def load_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with command-line overrides; raises ConfigError."""
    cfg = load(args.config)
    paths = {n: getattr(args, f"path_{n}") for n in PATH_FLAGS if getattr(args, f"path_{n}", None)}
    for name, value in paths.items():
        if not value.startswith("/") or not value.isprintable():
            raise ConfigError(f"--path.{name}", f"must be an absolute path, got {value!r}")
    if paths:
        cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, **paths))
    listen = {}
    if getattr(args, "listen_address", None):
        listen["address"] = listen_address(args.listen_address, "--listen.address")
    if getattr(args, "listen_port", None) is not None:
        if not 0 <= args.listen_port <= 65535:
            raise ConfigError("--listen.port", f"must be from 0 to 65535, got {args.listen_port}")
        listen["port"] = args.listen_port
    if listen:
        cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, **listen))
    if args.log_level:
        cfg = dataclasses.replace(cfg, log_level=args.log_level)
    return cfg


def load_failure(path: str | None, e: BaseException) -> str:
    """One printable line for an exception other than ConfigError out of loading a config."""
    return str(ConfigError(path or "(built-in defaults)", f"cannot load: {type(e).__name__}: {e}"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return client.report_main(args)
    if args.command == "heatmap":
        return tui.main(args)
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"mglrud: config: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a loader bug must still be one line and exit 2, not a traceback
        print(f"mglrud: config: {load_failure(args.config, e)}", file=sys.stderr)
        return 2
    # Under systemd, the journal with priorities (python3-systemd); else stderr with timestamps.
    journal = systemd.journal_handler() if args.command == "run" else None
    if journal is not None:
        logging.basicConfig(level=cfg.log_level.upper(), handlers=[journal], format="%(name)s: %(message)s")
    else:
        logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from mglrud.targets import missing_memcgs

    for key, problem in missing_memcgs(cfg.targets, FS(cfg.paths)):
        key, problem = escape(key), escape(problem)  # the memcg glob is the config's text
        if args.command == "check":  # the preflight of a config: a typo is an error
            print(f"mglrud: config: {key}: {problem}", file=sys.stderr)
            return 2
        logging.getLogger("mglrud").warning("config: %s: %s", key, problem)

    if args.command == "check":
        rows, usable = check.run(FS(cfg.paths))
        sys.stdout.write(check.format_table(rows, usable))
        sys.stdout.write(check.format_sources(FS(cfg.paths), cfg.sources))
        sys.stdout.write(check.format_bpf(check.bpf_program(FS(cfg.paths), cfg.bpf)))
        return 0 if usable else 1

    from mglrud.cycle import Engine  # imported here: `check` must work even if these break

    if args.command == "snapshot":
        engine = Engine(cfg)
        snap = engine.cycle(age=not args.no_age, age_all=True)
        sys.stdout.write(report.to_json(snap) if args.json else report.to_table(snap))
        # The sources chosen for this machine (sources:), e.g. procfs where there is no MGLRU.
        chosen = [s for s in snap.sources if s.name in engine.choice.active]
        return 0 if chosen and all(s.up for s in chosen) else 1

    from mglrud.daemon import Daemon, ListenError

    try:
        return Daemon(cfg, lambda: load_config(args)).run()
    except ListenError as e:
        # A port in use or an address the host lacks is the config's to fix: exit 2 like
        # any bad config (and the unit's RestartPreventExitStatus=2 stops a restart loop).
        if e.key:
            print(f"mglrud: config: {e.key}: {e}", file=sys.stderr)
            return 2
        print(f"mglrud: listen: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
