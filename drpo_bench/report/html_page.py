"""A self-contained HTML report: one file, images embedded as data URIs, nothing fetched.

Tables sit in ``overflow-x:auto`` wrappers (they scroll rather than widen the page) and images
are scaled to the page width, so the page fits a 1280-px window.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from drpo_bench.report.table import Table

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:4px 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;white-space:nowrap}"
    "td.wrap{white-space:normal;min-width:16em}"
    ".note{color:#555;font-size:12px}"
    "figure{margin:12px 0}figure img{max-width:100%;height:auto;display:block}"
    "figcaption{font-size:13px;color:#333}"
)


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def table_to_html(table: Table) -> str:
    esc = html.escape
    out = [f"<h3 id='tab-{esc(table.slug)}'>{esc(table.title)}</h3>", "<div class='scroll'><table>",
           "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.headers) + "</tr>"]
    for i, row in enumerate(table.rows):
        cells = []
        for j, c in enumerate(row):
            text = f"<b>{esc(c)}</b>" if table.bold and table.bold[i][j] else esc(c)
            cells.append(f"<td class='wrap'>{text}</td>" if len(c) > 40 else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    if table.note:
        out.append(f"<p class='note'>{esc(table.note)}</p>")
    return "\n".join(out) + "\n"


def figure_to_html(path: Path, caption: str, label: str) -> str:
    esc = html.escape
    return (f"<figure id='fig-{esc(label)}'><img src='{data_uri(path)}' alt='{esc(caption)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>\n")


def page(title: str, provenance: str, body: str) -> str:
    esc = html.escape
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p><i>{esc(provenance)}</i></p>"
            f"{body}</body></html>\n")
