"""LaTeX for pdflatex: ASCII-only escaping, tables that fit the text width, figures, the PDF.

The document is standalone (``\\documentclass{article}``) and uses only packages of Debian's
``texlive-latex-base`` and ``texlive-latex-recommended`` (:data:`PACKAGES`): a table too wide for the
page is shrunk with graphicx's ``\\resizebox``. Every non-ASCII character the report can produce is mapped to a LaTeX
command; anything else (a user's prompt in another script) is folded to ASCII or written as
``[U+XXXX]``, so pdflatex never sees a byte it cannot typeset.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from drpo_bench.errors import UserError
from drpo_bench.report.table import Table

_ESCAPES = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "±": r"\ensuremath{\pm}", "↑": r"\ensuremath{\uparrow}", "↓": r"\ensuremath{\downarrow}",
    "→": r"\ensuremath{\rightarrow}", "×": r"\ensuremath{\times}", "÷": r"\ensuremath{\div}", "Δ": r"\ensuremath{\Delta}",
    "√": r"\ensuremath{\surd}",
    "−": r"\ensuremath{-}", "≤": r"\ensuremath{\leq}", "≥": r"\ensuremath{\geq}", "≈": r"\ensuremath{\approx}",
    "·": r"\ensuremath{\cdot}", "µ": r"\ensuremath{\mu}", "μ": r"\ensuremath{\mu}", "°": r"\ensuremath{^\circ}",
    "—": "---", "–": "--", "†": r"\textdagger{}", "‡": r"\textdaggerdbl{}", "…": r"\ldots{}",
    "“": "``", "”": "''", "‘": "`", "’": "'", "\u00a0": "~", "§": r"\S{}", "©": r"\textcopyright{}",
}


def tex(text: object) -> str:
    """Literal text for LaTeX: special characters escaped, the output pure ASCII."""
    out = []
    for ch in str(text):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == "\n" or ch == "\t":
            out.append(" ")
        elif ord(ch) < 32 or ord(ch) == 127:
            continue
        elif ord(ch) < 128:
            out.append(ch)
        else:
            folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append("".join(_ESCAPES.get(c, c) for c in folded) if folded.strip() else f"[U+{ord(ch):04X}]")
    return "".join(out)


# ---- tables ----------------------------------------------------------------------------------

#: characters of cell text that fit one text width at \small with the default column padding
#: (article, 2 cm margins: 17 cm ~ 130 characters of \small digits; padding costs ~2 characters a column;
#: \resizebox shrinks what the estimate lets through)
WIDTH_CHARS = 120
#: a cell longer than this wraps in a paragraph (X) column instead of widening the table
WRAP_CHARS = 40


def _width(column: list[str]) -> int:
    return max((len(c) for c in column), default=0) + 2


def split_columns(table: Table, budget: int = WIDTH_CHARS) -> list[list[int]]:
    """Column indices of each part of a table that is too wide for one text width.

    The label columns (the row's name) start every part; the value columns are packed in order
    until the estimated width (characters of the widest cell, header included) reaches ``budget``.
    """
    columns = [[table.headers[j]] + [row[j] for row in table.rows] for j in range(len(table.headers))]
    widths = [min(_width(c), WRAP_CHARS + 2) for c in columns]
    labels = list(range(min(table.label_columns, len(columns))))
    label_width = sum(widths[j] for j in labels)
    parts: list[list[int]] = []
    current: list[int] = []
    used = label_width
    for j in range(len(labels), len(columns)):
        if current and used + widths[j] > budget:
            parts.append(labels + current)
            current, used = [], label_width
        current.append(j)
        used += widths[j]
    parts.append(labels + current)
    return parts


def _tabular(table: Table, columns: list[int]) -> list[str]:
    wrap = [any(len(row[j]) > (WRAP_CHARS if table.split else 32) for row in table.rows) for j in columns]
    spec = "".join(r">{\raggedright\arraybackslash}X" if w else "l" for w in wrap)
    env = "tabularx" if any(wrap) else "tabular"
    head = [rf"\begin{{tabularx}}{{\linewidth}}{{{spec}}}" if any(wrap) else rf"\begin{{tabular}}{{{spec}}}"]
    lines = head + [r"\toprule", " & ".join(tex(table.headers[j]) for j in columns) + r" \\", r"\midrule"]
    breakable = {j for j, w in zip(columns, wrap) if w}  # paragraph columns: a long path may break after '/'

    def cell(i: int, j: int) -> str:
        text = tex(table.rows[i][j])
        if j in breakable:
            text = text.replace("/", r"/\allowbreak{}")
        return rf"\textbf{{{text}}}" if table.bold and table.bold[i][j] else text

    for i in range(len(table.rows)):
        lines.append(" & ".join(cell(i, j) for j in columns) + r" \\")
    lines += [r"\bottomrule", rf"\end{{{env}}}"]
    if env == "tabular":  # shrink (never enlarge) what the width estimate let through
        lines = ([r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"] + lines[:-1]
                 + [lines[-1] + "}"])
    return lines


def table_to_latex(table: Table) -> str:
    """One ``table`` float; a table wider than the page is split into stacked parts."""
    parts = split_columns(table) if table.split else [list(range(len(table.headers)))]
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small",
             rf"\caption{{{tex(table.title)}{' (' + str(len(parts)) + ' parts)' if len(parts) > 1 else ''}}}",
             rf"\label{{tab:{table.slug}}}"]
    for k, columns in enumerate(parts):
        if k:
            lines.append(r"\par\medskip")
        lines += _tabular(table, columns)
    if table.note:
        lines += [r"\par\smallskip", rf"\parbox{{\linewidth}}{{\footnotesize {tex(table.note)}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---- figures and the document ----------------------------------------------------------------


def figure_to_latex(path: str, caption: str, label: str) -> str:
    return "\n".join([r"\begin{figure}[htbp]", r"\centering",
                      rf"\includegraphics[width=\linewidth,height=0.8\textheight,keepaspectratio]{{{path}}}",
                      rf"\caption{{{tex(caption)}}}", rf"\label{{fig:{label}}}", r"\end{figure}"]) + "\n"


PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage[a4paper,margin=2cm]{geometry}
\usepackage{booktabs}
\usepackage{tabularx}
\usepackage{array}
\usepackage{graphicx}
\usepackage[font=small]{caption}
\usepackage{textcomp}
\usepackage{float}
\setlength{\emergencystretch}{3em}
"""


def document(title: str, provenance: str, body: list[str]) -> str:
    """A standalone article; ``body`` is LaTeX already (tables, figures, paragraphs)."""
    head = (PREAMBLE + rf"\title{{{tex(title)}}}" + "\n\\date{}\n\\begin{document}\n\\maketitle\n"
            + rf"\noindent\textit{{{tex(provenance)}}}" + "\n\n")
    return head + "\n".join(body) + "\n\\end{document}\n"


# ---- the PDF ---------------------------------------------------------------------------------


@dataclass
class PdfBuild:
    pdf: Path
    log: Path


#: the LaTeX packages the report uses -> the Debian/Ubuntu package that provides each (what
#: ``apt-get install texlive-latex-recommended`` brings, texlive-latex-base with it)
PACKAGES = {
    "fontenc.sty": "texlive-latex-base", "t1enc.def": "texlive-latex-base", "geometry.sty": "texlive-latex-base",
    "tabularx.sty": "texlive-latex-base", "array.sty": "texlive-latex-base", "graphicx.sty": "texlive-latex-base",
    "textcomp.sty": "texlive-latex-base", "booktabs.sty": "texlive-latex-recommended",
    "caption.sty": "texlive-latex-recommended", "float.sty": "texlive-latex-recommended",
}
TEX_HINT = "Debian/Ubuntu: apt-get install texlive-latex-recommended"


def pdflatex() -> str | None:
    return shutil.which("pdflatex")


def missing_tex() -> str | None:
    """One line naming the first missing tool or LaTeX package the PDF needs and the package that
    provides it; None when pdflatex and every package in :data:`PACKAGES` are found."""
    if pdflatex() is None:
        return f"pdflatex is not on PATH ({TEX_HINT})"
    kpsewhich = shutil.which("kpsewhich")
    if kpsewhich is None:
        return f"kpsewhich is not on PATH, so the LaTeX packages cannot be checked (Debian/Ubuntu: apt-get install texlive-binaries)"
    found = subprocess.run([kpsewhich, *PACKAGES], capture_output=True, text=True, timeout=60).stdout.split()
    names = {Path(f).name for f in found}
    for name, package in PACKAGES.items():
        if name not in names:
            return f"LaTeX file {name} not found (Debian/Ubuntu: apt-get install {package})"
    return None


def require_pdflatex() -> str:
    """The pdflatex executable, or a UserError (exit 2) naming what is missing and its package."""
    problem = missing_tex()
    if problem is not None:
        raise UserError(f"{problem}; or write report.tex and compile it elsewhere (`--formats tex`).")
    return pdflatex()  # type: ignore[return-value]


def build_pdf(tex_source: str, folder: Path, assets: list[str], name: str = "report") -> PdfBuild:
    """Compile ``tex_source`` with pdflatex (twice, for labels) in a temporary folder.

    ``assets`` are paths relative to ``folder`` that the source includes (figures); the PDF
    and the last run's log are copied back as ``folder/<name>.pdf`` and ``folder/<name>.latex.log``.
    """
    engine = require_pdflatex()
    with tempfile.TemporaryDirectory(prefix="drpo-report-") as tmp:
        work = Path(tmp)
        for asset in assets:
            (work / asset).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / asset, work / asset)
        (work / f"{name}.tex").write_text(tex_source, encoding="ascii")
        for _ in range(2):  # the second pass resolves labels
            proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                                  cwd=work, capture_output=True, text=True, errors="replace", timeout=300)
            if proc.returncode != 0:
                break
        log = folder / f"{name}.latex.log"
        if (work / f"{name}.log").exists():
            shutil.copy2(work / f"{name}.log", log)
        if proc.returncode != 0 or not (work / f"{name}.pdf").exists():
            lines = [l for l in (proc.stdout or "").splitlines() if l.startswith("!") or l.startswith("l.")]
            raise UserError(f"pdflatex failed on {name}.tex ({'; '.join(lines[:4]) or 'no error line'}); "
                            f"full log: {log}")
        shutil.copy2(work / f"{name}.pdf", folder / f"{name}.pdf")
    return PdfBuild(folder / f"{name}.pdf", log)


_OVERFULL = re.compile(r"Overfull \\[hv]box \(([\d.]+)pt too (?:wide|high)\)")


def log_problems(log_text: str, tolerance_pt: float = 1.0) -> list[str]:
    """Errors and overfull boxes beyond ``tolerance_pt`` in a pdflatex log."""
    problems = [line for line in log_text.splitlines() if line.startswith("! ")]
    problems += [m.group(0) for m in _OVERFULL.finditer(log_text) if float(m.group(1)) > tolerance_pt]
    return problems
