"""Usage by key, model or route: the tokens of one reply (``flow_usage``), and
``./run.sh usage``, a report over the flow log's records (rotated files included).

    ./run.sh usage [--log FILE] [--since 2026-12-01|24h|30m] [--by key|model|route]
                   [--json|--csv]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from mitmproxy import http

from ..records import record_of, reply_json

KINDS = ("prompt", "cached", "completion")
COLUMNS = ("requests", "errors", *KINDS)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def tokens_of(usage: Any) -> dict[str, int] | None:
    """Prompt, cached (prompt tokens served from a cache) and completion tokens of a usage
    object in any API's shape; ``None`` when it is not one."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses and Anthropic Messages
        details = usage.get("input_tokens_details") or {}
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        cached = details.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0
        if "cache_read_input_tokens" in usage:  # Anthropic counts them beside input_tokens
            prompt = (prompt or 0) + (usage.get("cache_read_input_tokens") or 0)
    else:
        details = usage.get("prompt_tokens_details") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    if type(prompt) is not int and type(completion) is not int:
        return None
    return {"prompt": prompt if type(prompt) is int else 0,
            "cached": cached if type(cached) is int else 0,
            "completion": completion if type(completion) is int else 0}


def flow_usage(flow: http.HTTPFlow) -> dict[str, int] | None:
    """The tokens of a finished flow's reply: a stream's summary, the gateway's own count,
    else the upstream's body."""
    record = record_of(flow)
    summary = record.get("stream_summary")
    if summary is not None:
        return tokens_of(summary.get("usage"))
    usage = record.get("usage")
    if usage is None and flow.response is not None and flow.response.status_code == 200:
        body = reply_json(flow.response)
        usage = body.get("usage") if isinstance(body, dict) else None
    return tokens_of(usage)


def since(text: str) -> float:
    """``--since``: an ISO date or time (UTC unless it says), or an age (``24h``, ``30m``)."""
    match = _AGO.match(text)
    if match:
        return time.time() - float(match.group(1)) * _UNIT[match.group(2)]
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def log_files(path: str) -> list[str]:
    """The log and its rotated files, oldest first."""
    rotated = sorted(glob.glob(glob.escape(path) + ".*"),
                     key=lambda p: -int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1].isdigit()
                     else 0)
    return [p for p in rotated if p.rsplit(".", 1)[1].isdigit()] + (
        [path] if os.path.exists(path) else [])


def records(paths: list[str]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == "flow":
                    yield record


def report(rows: Iterator[dict[str, Any]], by: str, start: float = 0.0
           ) -> dict[str, dict[str, int]]:
    """Requests, errors and tokens per ``by`` (key, model or route), from ``start`` on."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for record in rows:
        if (record.get("started") or 0) < start or record.get("route") in (None, "passthrough"):
            continue
        if record.get("path", "").split("?")[0].rstrip("/") in ("/health", "/metrics"):
            continue
        row = table[str(record.get(by) or "-")]
        row["requests"] += 1
        status = record.get("status")
        if status is None or status >= 400 or record.get("error"):
            row["errors"] += 1
        for kind, n in (tokens_of(record.get("usage")) or {}).items():
            row[kind] += n
    return dict(sorted(table.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run.sh usage", description="Usage from the flow "
                                     "log: requests, errors and tokens per key, model or route.")
    parser.add_argument("--log", default=os.environ.get("LOG_FILE", "gpt-oss-harmony-groq.log"),
                        help="the flow log (LOG_FILE); its rotated files are read too")
    parser.add_argument("--since", help="an ISO date/time (UTC) or an age: 30m, 24h, 7d")
    parser.add_argument("--by", choices=("key", "model", "route"), default="key")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    args = parser.parse_args(argv)
    try:
        start = since(args.since) if args.since else 0.0
    except ValueError:
        parser.error(f"--since {args.since!r} is not a date, a time or an age like 24h")
    paths = log_files(args.log)
    if not paths:
        parser.error(f"no flow log at {args.log} (LOG_FILE, or --log)")
    table = report(records(paths), args.by, start)
    if args.json:
        json.dump([{args.by: name, **row} for name, row in table.items()], sys.stdout, indent=1)
        print()
    elif args.csv:
        out = csv.writer(sys.stdout)
        out.writerow((args.by, *COLUMNS))
        out.writerows((name, *row.values()) for name, row in table.items())
    else:
        width = max([len(args.by), *map(len, table)])
        print(f"{args.by:<{width}}  " + "  ".join(f"{c:>10}" for c in COLUMNS))
        for name, row in table.items():
            print(f"{name:<{width}}  " + "  ".join(f"{n:>10}" for n in row.values()))
    return 0
