#!/usr/bin/python3
"""Render mglrud's Prometheus rules from their templates, as a monitoring mixin's `_config` does.

deploy/prometheus/src/NAME.yml (templates) -> deploy/prometheus/rules/NAME.yml (what Prometheus
loads; committed, so the defaults work without running anything). Three settings, with the
defaults below (docs/fleet.md "Rules"):

  --selector      label matchers that pick mglrud's series: every raw mglrud_* series and `up`
                  in the rules gets them (the kubernetes-mixin's `*Selector`), e.g.
                  'job="mglrud"' or 'job="node-mglrud",env="prod"'; "" matches every job
  --cluster-label the label that tells clusters apart, kept in every aggregation and join
                  (the mixins' `clusterLabel`); "" for none
  --runbook-url   absolute URL of the runbook page; each alert's runbook_url is it plus
                  "#" and the alert's name in lower case (README.md has the sections)

Tokens in a template: `{@SELECTOR@}` or `{@SELECTOR@, other="x"}` in a series selector,
`@CLUSTER@` at the start of a by/on/without label list (it becomes "cluster, " or nothing),
`@RUNBOOK@` in a runbook_url. Any template in src/ is rendered: to make another rules file
follow the same settings (e.g. the Kubernetes recording rules), move it to src/, put the
tokens in, and run this. A token left over, or a rendered file Prometheus' YAML would not
read, is an error.

  /usr/bin/python3 deploy/prometheus/build.py                    # the defaults, into rules/
  /usr/bin/python3 deploy/prometheus/build.py --selector 'job="mglrud",env="prod"' \\
      --cluster-label k8s_cluster --runbook-url https://wiki.example.com/mglrud --out /etc/prometheus/rules
  /usr/bin/python3 deploy/prometheus/build.py --check            # exit 1 if rules/ is not up to date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
OUT = HERE / "rules"

# The `_config` defaults. The project has no published home yet, so the runbook base is a
# reserved .invalid name (RFC 2606): a link that cannot resolve, rather than one that points at
# a guessed site somebody else could own. Set --runbook-url to where your copy of README.md's
# runbook is published.
DEFAULTS = {
    "selector": 'job="mglrud"',
    "cluster_label": "cluster",
    "runbook_url": "https://mglrud.invalid/README.md",
}

_MATCHER = re.compile(r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*')
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TOKEN = re.compile(r"@[A-Z]+@")


class BuildError(Exception):
    """A setting or template is wrong; the message names it."""


def check_settings(selector: str, cluster_label: str, runbook_url: str) -> None:
    """One-line errors naming the setting, before anything is written."""
    if selector and not all(_MATCHER.fullmatch(m) for m in _split_matchers(selector)):
        raise BuildError(f"--selector: must be PromQL label matchers like job=\"mglrud\" or "
                         f"job=\"mglrud\",env=~\"prod|staging\" (no braces), got {selector!r}")
    if cluster_label and not _LABEL.fullmatch(cluster_label):
        raise BuildError(f"--cluster-label: must be a label name like cluster (or empty), got {cluster_label!r}")
    url = urlsplit(runbook_url)
    if url.scheme not in ("http", "https") or not url.netloc or url.fragment:
        raise BuildError(f"--runbook-url: must be an absolute http(s) URL without a #fragment (the alert's "
                         f"anchor is added), got {runbook_url!r}")


def _split_matchers(selector: str) -> list[str]:
    """'a="x,y",b!="z"' -> ['a="x,y"', 'b!="z"']: commas inside quoted values do not split."""
    out, cur, quoted, escaped = [], "", False, False
    for c in selector:
        if c == "," and not quoted:
            out.append(cur)
            cur = ""
            continue
        cur += c
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
    return out + [cur]


def render(text: str, selector: str, cluster_label: str, runbook_url: str, name: str = "template") -> str:
    """One template's text with the settings in; pure."""
    sel = ",".join(m.strip() for m in _split_matchers(selector)) if selector else ""
    # {@SELECTOR@} alone, or followed by the series' own matchers
    out = re.sub(r"\{@SELECTOR@(\s*,\s*)?", lambda m: "{" + sel + (", " if sel and m.group(1) else ""), text)
    out = out.replace("@CLUSTER@", f"{cluster_label}, " if cluster_label else "")
    out = out.replace("@RUNBOOK@", runbook_url)
    left = sorted(set(_TOKEN.findall(out)))
    if left:
        raise BuildError(f"{name}: unknown token(s) {', '.join(left)}; known: {{@SELECTOR@}}, @CLUSTER@, @RUNBOOK@")
    try:
        yaml.safe_load(out)
    except yaml.YAMLError as e:
        raise BuildError(f"{name}: not valid YAML once rendered: {str(e).splitlines()[0]}") from None
    return out


def header(name: str, selector: str, cluster_label: str, runbook_url: str) -> str:
    return (f"# GENERATED by deploy/prometheus/build.py from deploy/prometheus/src/{name}: edit that, not this.\n"
            f"# selector: {selector or '(none)'}; cluster label: {cluster_label or '(none)'}; "
            f"runbooks: {runbook_url}\n")


def build(selector: str = DEFAULTS["selector"], cluster_label: str = DEFAULTS["cluster_label"],
          runbook_url: str = DEFAULTS["runbook_url"], src: Path = SRC) -> dict[str, str]:
    """Every template of `src` rendered: {file name: text}."""
    check_settings(selector, cluster_label, runbook_url)
    templates = sorted(src.glob("*.yml"))
    if not templates:
        raise BuildError(f"{src}: no templates (*.yml)")
    return {t.name: header(t.name, selector, cluster_label, runbook_url)
            + render(t.read_text(), selector, cluster_label, runbook_url, str(t)) for t in templates}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selector", default=DEFAULTS["selector"], help=f"default: {DEFAULTS['selector']}")
    ap.add_argument("--cluster-label", default=DEFAULTS["cluster_label"],
                    help=f"default: {DEFAULTS['cluster_label']}")
    ap.add_argument("--runbook-url", default=DEFAULTS["runbook_url"], help=f"default: {DEFAULTS['runbook_url']}")
    ap.add_argument("--src", type=Path, default=SRC, help="templates (default: deploy/prometheus/src)")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write (default: deploy/prometheus/rules)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from the build")
    args = ap.parse_args(argv)
    try:
        files = build(args.selector, args.cluster_label, args.runbook_url, args.src)
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 2
    stale = [n for n, text in files.items()
             if not (args.out / n).exists() or (args.out / n).read_text() != text]
    if args.check:
        for n in stale:
            print(f"{args.out / n} is not what build.py renders: run deploy/prometheus/build.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (args.out / n).write_text(text)
        print(f"wrote {args.out / n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
