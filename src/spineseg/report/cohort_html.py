"""``report.html``: a cohort's results on one page a reader can check at a glance.

One self-contained file (inline CSS and JavaScript, thumbnails embedded as data URIs), so it opens
offline, can be mailed or archived with the results, and requests nothing from anywhere. One row
per case: preview thumbnail, status, flags, volume, extent, intensity, runtime, and the vertebra
count when any case was split into vertebrae (``segment --vertebrae``); rows with flags
come first and any column sorts on a click. The page is built from each case's ``stats.json``,
so a case finished by an earlier run (skipped now) shows its figures and flags too.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spineseg import __version__
from spineseg.io import write_text_atomic

#: Thumbnail size (pixels, the longer side): enough to see whether the outline follows the
#: column, small enough that a 500-case report stays a few megabytes.
THUMBNAIL_PX = 360
# Sort weight of a row: failed and empty cases first, then by number of flags.
_SEVERE = {"failed": 100, "empty": 50}


@dataclass(frozen=True)
class ReportRow:
    """One case of the report: what the batch knows (status, message, runtime) and its record."""

    case: str
    status: str  # "done" | "skipped" | "failed"
    message: str = ""
    seconds: float | None = None
    record: dict[str, Any] = field(default_factory=dict)
    preview: Path | None = None

    @property
    def flags(self) -> list[dict[str, str]]:
        if self.status == "failed":
            return [{"code": "failed", "message": self.message or "failed"}]
        flags = self.record.get("flags", [])
        return [f for f in flags if isinstance(f, dict) and "code" in f]


def thumbnail_data_uri(png: Path, size: int = THUMBNAIL_PX) -> str | None:
    """``png`` shrunk to ``size`` pixels (longer side) as a JPEG data URI; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _number(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else ""


def _weight(row: ReportRow) -> int:
    return sum(_SEVERE.get(f["code"], 1) for f in row.flags)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1f1f1f}
h1{font-size:1.3em;margin:0 0 .3em}
p.summary{margin:0 0 1em;color:#3f3f3f}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{display:block;max-width:360px;height:auto}
.flag{display:inline-block;border-radius:3px;padding:0 .35em;margin:0 .2em .2em 0;
 background:#ffe08a;font-size:.85em}
.flag.failed,.flag.empty{background:#f8b4b4}
tr.failed td{background:#fff4f4}
.status-done{color:#1a7f37}.status-skipped{color:#5f5f5f}.status-failed{color:#b42318}
.msg{color:#5f5f5f;font-size:.85em;max-width:32em}
"""

# Sorts the rows by the clicked column's data-key values (numbers numerically); no libraries.
# ``report.html#sort=volume`` (``#sort=-volume``: descending) opens the page sorted.
_JS = """
(function(){
  var table=document.getElementById('cases');
  var body=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  function value(row,key){
    var v=row.getAttribute('data-'+key);
    var n=parseFloat(v);
    return (v!==null&&v!==''&&!isNaN(n)&&isFinite(v))?n:(v||'').toLowerCase();
  }
  function sortBy(index,descending){
    var key=heads[index].getAttribute('data-key');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=value(a,key),y=value(b,key);
      if(typeof x!==typeof y){x=String(x);y=String(y);}
      return (x<y?-1:x>y?1:0)*(descending?-1:1);
    });
    rows.forEach(function(r){body.appendChild(r);});
    for(var i=0;i<heads.length;i++){heads[i].removeAttribute('aria-sort');}
    heads[index].setAttribute('aria-sort',descending?'descending':'ascending');
  }
  Array.prototype.forEach.call(heads,function(th,i){
    if(!th.getAttribute('data-key')){return;}
    th.addEventListener('click',function(){
      sortBy(i,th.getAttribute('aria-sort')!=='descending');
    });
  });
  var m=/^#sort=(-?)([a-z]+)$/.exec(window.location.hash);
  if(m){
    for(var i=0;i<heads.length;i++){
      if(heads[i].getAttribute('data-key')===m[2]){sortBy(i,m[1]==='-');}
    }
  }
})();
"""

_COLUMNS = [("case", "Case"), (None, "Preview"), ("status", "Status"), ("flags", "Flags"),
            ("volume", "Volume (mL)"), ("extent", "Extent (mm)"), ("hu", "HU mean / median"),
            ("seconds", "Runtime (s)")]
_VERTEBRAE_COLUMN = ("vertebrae", "Vertebrae")


def vertebra_count(record: dict[str, Any]) -> int | None:
    """How many vertebrae a case's ``stats.json`` lists; None when none were computed."""
    summary = record.get("vertebrae_summary")
    count = summary.get("count") if isinstance(summary, dict) else None
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    listed = record.get("vertebrae")
    return len(listed) if isinstance(listed, dict) else None  # records written before "count"


def _row_html(row: ReportRow, with_vertebrae: bool = False) -> str:
    rec = row.record
    stats = rec.get("statistics") if isinstance(rec.get("statistics"), dict) else {}
    volume = rec.get("spine_volume_ml")
    extent = rec.get("craniocaudal_extent_mm")
    mean, median = stats.get("intensity_mean_hu"), stats.get("intensity_median_hu")
    seconds = row.seconds
    if seconds is None:
        total = rec.get("runtime_s", {}).get("total_s") if isinstance(rec.get("runtime_s"),
                                                                       dict) else None
        seconds = total if isinstance(total, int | float) else None
    thumb = thumbnail_data_uri(row.preview) if row.preview is not None else None
    image = (f'<img src="{thumb}" alt="preview of {html.escape(row.case)}">' if thumb
             else "")
    flags = "".join(f'<span class="flag {html.escape(f["code"])}" '
                    f'title="{html.escape(str(f.get("message", "")))}">'
                    f'{html.escape(f["code"])}</span>' for f in row.flags)
    notes = "; ".join(str(f.get("message", "")) for f in row.flags if f["code"] != "failed")
    message = row.message if row.status == "failed" else notes
    attrs = {"case": row.case, "status": row.status, "flags": _weight(row),
             "volume": "" if volume is None else volume, "extent": "" if extent is None else extent,
             "hu": "" if mean is None else mean, "seconds": "" if seconds is None else seconds}
    count = vertebra_count(rec)
    if with_vertebrae:
        attrs["vertebrae"] = "" if count is None else count
    vertebrae = (f'<td class="num">{"" if count is None else count}</td>'
                 if with_vertebrae else "")
    data = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in attrs.items())
    cls = ' class="failed"' if row.status == "failed" else ""
    hu = f"{_number(mean)} / {_number(median)}" if mean is not None else ""
    return (f"<tr{cls} {data}>"
            f"<td>{html.escape(row.case)}</td><td>{image}</td>"
            f'<td class="status-{html.escape(row.status)}">{html.escape(row.status)}</td>'
            f'<td>{flags}<div class="msg">{html.escape(message)}</div></td>'
            f'<td class="num">{_number(volume)}</td><td class="num">{_number(extent, 0)}</td>'
            f'<td class="num">{hu}</td><td class="num">{_number(seconds)}</td>{vertebrae}</tr>')


def render_report(rows: Sequence[ReportRow], title: str = "spineseg cohort report") -> str:
    """The report page for ``rows`` (flagged cases first, then by name)."""
    ordered = sorted(rows, key=lambda r: (-_weight(r), r.case))
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    flagged = sum(bool(r.flags) for r in rows)
    models = sorted({str(r.record.get("model", {}).get("sha256", ""))[:12] for r in rows
                     if isinstance(r.record.get("model"), dict)} - {""})
    summary = (f"{len(rows)} cases: {counts['done']} segmented, {counts['skipped']} done "
               f"earlier, {counts['failed']} failed; <b>{flagged} flagged</b> for a look. "
               f"spineseg {html.escape(__version__)}"
               + (f", model SHA-256 {html.escape(', '.join(models))}…" if models else "")
               + f"; written {time.strftime('%Y-%m-%d %H:%M')}. Click a column to sort; hover "
               "a flag for what was measured.")
    with_vertebrae = any(vertebra_count(r.record) is not None for r in rows)
    columns = [*_COLUMNS, *([_VERTEBRAE_COLUMN] if with_vertebrae else [])]
    heads = "".join(f'<th data-key="{key}">{label}</th>' if key else f"<th>{label}</th>"
                    for key, label in columns)
    body = "\n".join(_row_html(r, with_vertebrae) for r in ordered)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            '<link rel="icon" href="data:,">'  # no favicon request: nothing leaves the page
            f"<style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"summary\">{summary}</p>"
            f'<table id="cases"><thead><tr>{heads}</tr></thead><tbody>\n{body}\n</tbody></table>'
            f"<script>{_JS}</script></body></html>\n")


def write_cohort_report(path: Path, rows: Sequence[ReportRow]) -> Path:
    """Write (or replace) the report atomically."""
    return write_text_atomic(path, render_report(rows), overwrite=True)
