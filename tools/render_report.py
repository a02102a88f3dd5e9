"""Render a cohort's report.html in real headless Chromium and check it: one row per case, the
flags the stats.json files hold, no console errors, no request leaving the page.

    python tools/render_report.py OUT/report.html [--install] [--expect-rows N]

The page is opened as ``report.html#sort=case``, so its script sorts the rows by case name; the
rendered DOM (``--dump-dom``, after the script ran) is parsed with html.parser, and
Chromium's console log (``--enable-logging=stderr``) is scanned for JavaScript errors. With
``--install``, Debian's ``chromium`` package is installed with apt-get when no Chromium is found
(a development check only: spineseg itself never needs a browser). Exits 0 when the checks pass,
1 when they fail, 2 when no Chromium is available (one line saying so).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# What Chromium writes to stderr for a page's console error or an uncaught exception.
CONSOLE_ERROR = re.compile(r"(Uncaught|CONSOLE\(\d+\).*(Error|error)|:ERROR:CONSOLE)")


def find_chromium(install: bool) -> str | None:
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    if install and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return shutil.which("chromium")
    return None


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.flags: dict[str, list[str]] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            value = a.get(key)
            if value and not value.startswith("data:"):
                self.external.append(value)
        if tag == "tr" and a.get("data-case") is not None:
            self.rows.append(a)
            self.flags[str(a["data-case"])] = []
        elif tag == "span" and "flag" in (a.get("class") or "").split() and self.rows:
            self.flags[str(self.rows[-1]["data-case"])].append(str(a["class"]).split()[1])


def render(chromium: str, page: Path) -> tuple[str, str]:
    """(DOM after scripts ran, Chromium's stderr with the console log)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri() + "#sort=case"],
            # Decoded as UTF-8 whatever the process locale is: ITK's DICOM writer switches
            # it to "C" (ASCII), and the page holds non-ASCII text.
            capture_output=True, encoding="utf-8", errors="replace", timeout=120, check=False)
    return done.stdout, done.stderr


def check(page: Path, chromium: str, expect_rows: int | None) -> list[str]:
    """The problems found (empty when the page is fine)."""
    dom, log = render(chromium, page)
    parsed = _Rows()
    parsed.feed(dom)
    problems = []
    if not dom.strip():
        problems.append("Chromium returned no DOM")
    cases = [p for p in page.parent.iterdir() if (p / "stats.json").is_file()]
    if expect_rows is not None and len(parsed.rows) != expect_rows:
        problems.append(f"{len(parsed.rows)} rows, expected {expect_rows}")
    order = [str(r["data-case"]) for r in parsed.rows]
    if order != sorted(order, key=str.lower):
        problems.append(f"the page's sort script did not run (#sort=case gave {order[:4]})")
    shown = {str(r["data-case"]) for r in parsed.rows}
    missing = sorted(p.name for p in cases if p.name not in shown)
    if missing:
        problems.append(f"finished cases without a row: {', '.join(missing)}")
    for case in cases:
        if case.name not in parsed.flags:
            continue
        record = json.loads((case / "stats.json").read_text(encoding="utf-8"))
        recorded = [f["code"] for f in record.get("flags", [])]
        if parsed.flags[case.name] != recorded:
            problems.append(f"{case.name}: page shows flags {parsed.flags[case.name]}, "
                            f"stats.json has {recorded}")
    if parsed.external:
        problems.append(f"the page refers to outside resources: {parsed.external[:3]}")
    errors = [line for line in log.splitlines() if CONSOLE_ERROR.search(line)]
    if errors:
        problems.append(f"console errors: {errors[:3]}")
    print(f"{page}: {len(parsed.rows)} rows rendered by {chromium}; flags "
          f"{ {k: v for k, v in parsed.flags.items() if v} }")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--install", action="store_true",
                   help="apt-get install Debian's chromium when none is found")
    p.add_argument("--expect-rows", type=int, default=None)
    args = p.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such file", file=sys.stderr)
        return 1
    chromium = find_chromium(args.install)
    if chromium is None:
        print("skipped: no Chromium found (install Debian's chromium, or pass --install)",
              file=sys.stderr)
        return 2
    problems = check(args.report, chromium, args.expect_rows)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("OK: one row per case, flags as recorded, no console errors, nothing external")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
