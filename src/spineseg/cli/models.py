"""``spineseg models``: list the registered networks with their size and cost on one slice."""

from __future__ import annotations

import argparse
import json
from typing import Any

from spineseg.models import list_models, profile_models


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the networks: parameters, GFLOPs and CPU latency for one slice",
        description="Build every registered network and measure, for one 1-channel slice: "
                    "parameters, GFLOPs (torch FlopCounterMode) and median CPU latency.",
    )
    p.add_argument("--size", type=int, default=512, help="slice side in pixels (default 512)")
    p.add_argument("--width", type=int, default=None,
                   help="base_width of every network (default: each network's default, 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = {} if args.width is None else {"base_width": args.width}
    profiles = profile_models(list_models(), size=args.size, repeats=args.repeats, **config)
    if args.json:
        print(json.dumps([p.to_dict() for p in profiles], indent=2))
        return 0
    print(f"{'name':<10} {'parameters':>12} {'GFLOPs':>9} {'CPU ms':>9}   "
          f"(one 1x1x{args.size}x{args.size} slice, {profiles[0].threads} threads)")
    for p in profiles:
        print(f"{p.name:<10} {p.parameters:>12,} {p.gflops:>9.2f} {p.latency_ms:>9.1f}")
    return 0
