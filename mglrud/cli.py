"""Command line: `mglrud run | check | snapshot | report | heatmap`. main() returns the exit status.

Exit status: 0 ok, 1 the machine cannot do it (check failed, port taken,
a chosen source down for snapshot), 2 bad usage or bad config. Errors a user can
fix are printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from mglrud import __version__, check, client, snapshot_json, systemd, tui, webconfig
from mglrud.config import DEFAULT_PORT, DEFAULT_URL, Config, ConfigError, escape, listen_address, load
from mglrud.render.heatmap import OVERLAYS
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
    common.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="exporter-toolkit web config: TLS, basic auth, headers (overrides web_config_file)")

    p = argparse.ArgumentParser(prog="mglrud", description="Age memcgs through the multi-gen LRU and "
                                                           "export their generations to Prometheus.")
    p.add_argument("--version", action="version", version=f"mglrud {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the daemon: age on schedule, serve /metrics")
    run.add_argument("--listen.address", dest="listen_address", metavar="ADDR",
                     help="overrides listen.address (default 127.0.0.1)")
    run.add_argument("--listen.port", dest="listen_port", type=int, metavar="PORT",
                     help=f"overrides listen.port (default {DEFAULT_PORT}; 0 picks a free port)")
    run.add_argument("--listen.socket", dest="listen_socket", metavar="PATH",
                     help="overrides listen.socket: the root-only unix socket with the full view")
    run.add_argument("--web.listen-address", dest="web_listen_address", metavar="HOST:PORT",
                     help="address and port as node_exporter takes them: 127.0.0.1:9746, [::1]:9746, "
                          ":9746 (every IPv4 address); overrides listen.address and listen.port")
    sub.add_parser("check", parents=[common], help="preflight: what works here and why not; exit 0/1")
    snap = sub.add_parser("snapshot", parents=[common], help="run one cycle and print it")
    snap.add_argument("--json", action="store_true", help="print the JSON of /snapshot.json")
    snap.add_argument("--no-age", action="store_true", help="only read; do not age the targets first")
    _report_parser(sub)  # reads a running daemon: no config, no kernel access
    _heatmap_parser(sub)  # a daemon's snapshots, or its own session of the daemon's cycle
    return p


def _report_parser(sub) -> None:
    rep = sub.add_parser("report", help="per-mapping table from a running daemon, biggest never-accessed first")
    who = rep.add_mutually_exclusive_group(required=True)
    who.add_argument("--target", metavar="NAME", help="a configured target's name")
    who.add_argument("--pid", type=int, metavar="PID", help="a process of a configured target")
    rep.add_argument("--url", help=f"the daemon's address (default: its socket {client.DEFAULT_SOCKET} when this user "
                                   f"may connect to it, else {DEFAULT_URL})")


def _heatmap_parser(sub) -> None:
    hm = sub.add_parser(
        "heatmap", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="live address x time heatmap of one target or process (or --png FILE)",
        description="Live address x time heatmap: rows are address ranges (hex start, mapping), columns "
                    "aggregation intervals, newest right. Reads a running daemon's /snapshot.json; with none "
                    "reachable (or --own) runs its own session of the daemon's sources for just this pid/target. "
                    "The status line says which.",
        epilog="keys: q quit; o next overlay, 1 heat, 2 node, 3 lru (anon/file); [ ] shorter/longer "
               "aggregation interval; a A shorter/longer aging interval (own session only: attached, the "
               "aging interval is the daemon's config); up/down (k/j) select a row; z or enter zoom into the "
               "selected row's address range; Z, u or backspace zoom out; p or space pause.\n"
               "Without colour (NO_COLOR, TERM=dumb, --no-color) the glyphs carry the map: heat . : - = + * # % @, "
               "node digits, a/f for anon/file, ? not measured in the interval, blank not resident.\n"
               "A column shows the hottest measurement of its interval: a /proc snapshot, or an aging pass of the "
               "BPF source (none in the interval: ?); an interval without a snapshot gets no column. Exit status: 0, or 1 with one line (no such process, target or pid unknown to the "
               "daemon, unwritable --png path).")
    who = hm.add_mutually_exclusive_group(required=True)
    who.add_argument("--target", metavar="NAME", help="a configured target's name")
    who.add_argument("--pid", type=int, metavar="PID", help="one process")
    hm.add_argument("--url", help=f"the daemon's address (default: its socket {client.DEFAULT_SOCKET} when this user "
                                  f"may connect to it, else {DEFAULT_URL})")
    hm.add_argument("--own", action="store_true", help="run an own session even if a daemon answers")
    hm.add_argument("--config", "-c", metavar="FILE",
                    help="own session: config to take the target (--target) and source settings from")
    hm.add_argument("--aging", type=_seconds, default=5.0, metavar="SECONDS",
                    help="own session: the aging interval to start with (default 5)")
    hm.add_argument("--aggregate", type=_seconds, default=2.0, metavar="SECONDS",
                    help="seconds per column to start with (default 2)")
    hm.add_argument("--poll", type=_seconds, default=1.0, metavar="SECONDS",
                    help="seconds between reads of the daemon or cycles of the own session (default 1)")
    hm.add_argument("--no-color", action="store_true", help="glyphs only (also NO_COLOR or TERM=dumb)")
    hm.add_argument("--png", metavar="FILE", help="write the heatmap as a PNG image and exit")
    hm.add_argument("--columns", type=int, default=1, metavar="N",
                    help="--png: aggregation intervals to show (default 1: the latest snapshot)")
    hm.add_argument("--overlay", choices=OVERLAYS, default="heat", help="--png: the overlay (default heat)")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600 seconds, got {text!r}")
    return v


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
    if getattr(args, "listen_socket", None):
        cfg = dataclasses.replace(cfg, listen=dataclasses.replace(
            cfg.listen, socket=_listen_socket(args.listen_socket, "--listen.socket")))
    if getattr(args, "web_listen_address", None):
        if listen:
            raise ConfigError("--web.listen-address", "give it or --listen.address/--listen.port, not both")
        listen = parse_listen_address(args.web_listen_address)
    if listen:
        cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, **listen))
    if getattr(args, "web_config_file", None):
        cfg = dataclasses.replace(cfg, web_config_file=os.path.abspath(args.web_config_file))
    if cfg.web_config_file:
        webconfig.load(cfg.web_config_file)  # every problem now, as one line naming the key
    if args.log_level:
        cfg = dataclasses.replace(cfg, log_level=args.log_level)
    return cfg


def _listen_socket(value: str, key: str) -> str:
    from mglrud.config.sections import _listen
    try:
        return _listen({"socket": value}).socket
    except ConfigError as e:
        raise ConfigError(key, e.message) from None


def parse_listen_address(value: str) -> dict:
    """node_exporter's --web.listen-address: HOST:PORT, [V6]:PORT or :PORT -> listen.address, listen.port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("--web.listen-address", f"must be HOST:PORT like 127.0.0.1:{DEFAULT_PORT}, "
                                                  f"[::1]:{DEFAULT_PORT} or :{DEFAULT_PORT}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = listen_address(host or "0.0.0.0", "--web.listen-address")
    return {"address": host, "port": int(port)}


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
        sys.stdout.write(check.format_sources(FS(cfg.paths), cfg.sources, cfg.procfs.clear_refs))
        sys.stdout.write(check.format_bpf(check.bpf_program(FS(cfg.paths), cfg.bpf)))
        return 0 if usable else 1

    from mglrud.cycle import Engine  # imported here: `check` must work even if these break

    if args.command == "snapshot":
        engine = Engine(cfg)
        snap = engine.cycle(age=not args.no_age, age_all=True)
        from mglrud.render.snapshot_table import to_table

        sys.stdout.write(snapshot_json.to_json(snap) if args.json else to_table(snap))
        # The sources chosen for this machine (sources:), e.g. procfs where there is no MGLRU.
        chosen = [s for s in snap.sources if s.name in engine.choice.active]
        return 0 if chosen and all(s.up for s in chosen) else 1

    from mglrud.daemon import Daemon, ListenError

    try:
        return Daemon(cfg, lambda: load_config(args)).run()
    except ConfigError as e:  # the web config file changed for the worse since load_config read it
        print(f"mglrud: config: {e}", file=sys.stderr)
        return 2
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
