"""``leap validate-programs --html``: coverage and the distributions of verbs, objects, predicates, steps and
control flow of a program file, as a self-contained page of inline SVG charts."""

from __future__ import annotations

from leap_cli.report.html import bar_chart, esc, page

TOP = 25


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
    frac = cov.get("fraction")
    body.append(f"<p><b>Coverage:</b> {cov.get('valid', 0)} valid programs over {cov.get('segments', '?')} segments"
                + (f" ({100 * frac:.1f}%)" if isinstance(frac, (int, float)) else "")
                + f" &middot; {rep.get('records', 0)} records, {rep.get('duplicates', 0)} duplicates</p>")
    body.append(bar_chart("Records by status", [(s, float(statuses.get(s, 0))) for s in ("valid", "invalid", "failed")],
                          colour="#4a9b6e"))
    steps = hist.get("steps") or {}
    steps_sorted = sorted(steps.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 10 ** 6)
    for name, data, colour in (
            ("Control flow (steps of each kind)", _counts(hist.get("control_flow") or {}), "#8a4ab5"),
            ("Sub-actions per program", [(str(k), float(v)) for k, v in steps_sorted], "#b5834a"),
            (f"Sub-action verbs (top {TOP})", _counts(hist.get("verbs") or {}), "#4a7fb5"),
            (f"Objects (top {TOP})", _counts(hist.get("objects") or {}), "#4ab58a"),
            (f"Predicates in conditions (top {TOP})", _counts(hist.get("predicates") or {}), "#b54a6a")):
        body.append(f"<h2>{esc(name)}</h2>" + bar_chart(name, data, colour=colour, show_title=False))
    errs = rep.get("errors") or []
    if errs:
        body.append(f"<h2>Records with findings ({len(errs)})</h2><table><tr><th>segment</th><th>status</th>"
                    "<th>first finding</th></tr>")
        for r in errs[:200]:
            first = (r.get("errors") or [{"pointer": "", "message": ""}])[0]
            body.append(f"<tr><td>{esc(r.get('narration_id'))}</td><td><span class='tag {esc(r.get('status'))}'>"
                        f"{esc(r.get('status'))}</span></td><td>{esc(first.get('pointer', ''))} "
                        f"{esc(first.get('message', ''))}</td></tr>")
        body.append("</table>")
    return page(title, "".join(body))
