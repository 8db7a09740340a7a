"""``leap validate-programs --html``: coverage and the distributions of verbs, objects, predicates, steps and
control flow of a program file, as a self-contained page of inline SVG charts."""

from __future__ import annotations

from leap_cli.common import counted
from leap_cli.report.html import bar_chart, esc, page

TOP = 25
ROWS = 200  # table rows a page shows


def _counts(h: dict, top: int = TOP) -> list[tuple[str, float]]:
    items = sorted(h.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [(str(k), float(v)) for k, v in items[:top]]


def programs_report_html(rep: dict, *, title: str | None = None) -> str:
    """The page for one report dict as ``validate_records`` returns it."""
    cov = rep.get("coverage") or {}
    statuses = rep.get("statuses") or {}
    hist = rep.get("histograms") or {}
    title = title or f"Action programs: {rep.get('split', '?')} split"
    body = [f"<h1>{esc(title)}</h1>"]
    if rep.get("files"):
        body.append("<p class='muted'>Validated: " + ", ".join(f"<code>{esc(f)}</code>" for f in rep["files"]) + "</p>")
    frac = cov.get("fraction")
    malformed = len(rep.get("malformed") or [])
    of = cov.get("of", "segments")
    body.append(f"<p><b>Coverage:</b> {cov.get('valid', 0)} valid programs over {cov.get('segments', '?')} {esc(of)}"
                + (f" ({100 * frac:.1f}%)" if isinstance(frac, (int, float)) else "")
                + f" &middot; {counted(rep.get('records', 0), 'record')}, {counted(rep.get('duplicates', 0), 'duplicate')}"
                + f" &middot; {counted(malformed, 'line')} that {'is not a record' if malformed == 1 else 'are not records'}</p>")
    if of == "records":
        body.append("<p class='muted'>The annotations hold no file of this split: coverage counts the records, and "
                    "the programs were not checked against the segments' labels.</p>")
    if cov.get("not_in_split"):
        n = cov["not_in_split"]
        body.append(f"<p><b>{counted(n, 'record')} {'is not a segment' if n == 1 else 'are not segments'} of the "
                    f"{esc(rep.get('split', '?'))} "
                    "split</b> (not counted in the coverage, but in the charts), e.g. "
                    + ", ".join(f"<code>{esc(x)}</code>" for x in cov.get("not_in_split_examples") or []) + "</p>")
    body.append(bar_chart("Records by status", [(s, float(statuses.get(s, 0))) for s in ("valid", "invalid", "failed")],
                          colour="#4a9b6e"))
    steps = hist.get("steps") or {}
    steps_sorted = sorted(steps.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 10 ** 6)
    flow = hist.get("control_flow") or {}
    kinds = ("loop", "conditional", "routine")
    for name, data, colour in (
            ("Control-flow steps of each kind (all valid programs)",
             [(k, float(flow.get(k, 0))) for k in kinds], "#8a4ab5"),
            ("Valid programs with at least one",
             [(k, float(flow.get(f"programs_with_{k}", 0))) for k in kinds], "#6a4ab5"),
            ("Sub-actions per program (then-branches, each loop once)",
             [(str(k), float(v)) for k, v in steps_sorted], "#b5834a"),
            (f"Sub-action verbs (top {TOP})", _counts(hist.get("verbs") or {}), "#4a7fb5"),
            (f"Objects (top {TOP})", _counts(hist.get("objects") or {}), "#4ab58a"),
            (f"Predicates in conditions (top {TOP})", _counts(hist.get("predicates") or {}), "#b54a6a")):
        body.append(f"<h2>{esc(name)}</h2>" + bar_chart(name, data, colour=colour, show_title=False))
    errs = rep.get("errors") or []
    if errs:
        body.append(f"<h2>Records with findings ({len(errs)}{_shown(errs)})</h2><table><tr><th>segment</th>"
                    "<th>status</th><th>first finding</th></tr>")
        for r in errs[:ROWS]:
            first = (r.get("errors") or [{"pointer": "", "message": ""}])[0]
            body.append(f"<tr><td>{esc(r.get('narration_id'))}</td><td><span class='tag {esc(r.get('status'))}'>"
                        f"{esc(r.get('status'))}</span></td><td>{esc(first.get('pointer', ''))} "
                        f"{esc(first.get('message', ''))}</td></tr>")
        body.append("</table>")
    bad = rep.get("malformed") or []
    if bad:
        body.append(f"<h2>Lines that are not program records ({len(bad)}{_shown(bad)})</h2><table><tr><th>file</th>"
                    "<th>line</th><th>problem</th></tr>" + "".join(
                        f"<tr><td>{esc(m.get('file'))}</td><td>{esc(m.get('line'))}</td><td>{esc(m.get('problem'))}"
                        "</td></tr>" for m in bad[:ROWS]) + "</table>")
    return page(title, "".join(body))


def _shown(rows: list) -> str:
    return f", the first {ROWS} shown" if len(rows) > ROWS else ""
