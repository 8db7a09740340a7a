"""An action program as a rich tree (terminal) or as HTML steps and a storyboard."""

from __future__ import annotations

from rich.tree import Tree

from leap_cli.programs.provenance import generator_text, made_by
from leap_cli.report.html import esc
from leap_cli.report.terminal import printable


def _line(value) -> str:
    """Record text in a tree label: one line, printed as itself."""
    return printable(value, one_line=True)


def condition_text(c: dict) -> str:
    args = ", ".join(str(a) for a in c.get("args", []))
    return f"{'not ' if c.get('negated') else ''}{c.get('predicate', '?')}({args})"


def conditions_text(cs: list[dict] | None) -> str:
    return ", ".join(condition_text(c) for c in cs or []) or "-"


def sub_action_text(s: dict) -> str:
    """``verb(object_a, object_b)`` and the hand: ``cut(tomato, knife) with the right hand``."""
    objects = ", ".join(o for o in (s.get("object_a"), s.get("object_b")) if o)
    text = f"{s.get('verb', '?')}({objects})"
    hand = s.get("hand")
    if hand:
        text += " with both hands" if hand == "both" else f" with the {hand} hand" if hand in ("left", "right") \
            else f" with {hand} hand"
    return text


def _add_steps(node: Tree, steps: list[dict], counter: list[int]) -> None:
    for s in steps or []:
        kind = s.get("type")
        if kind == "sub_action":
            counter[0] += 1
            label = f"[bold]{counter[0]}. {_line(sub_action_text(s))}[/]"
            if s.get("purpose"):
                label += f"  [dim]- {_line(s['purpose'])}[/]"
            child = node.add(label)
            if s.get("pre"):
                child.add(f"[cyan]pre[/]  {_line(conditions_text(s['pre']))}")
            if s.get("post"):
                child.add(f"[green]post[/] {_line(conditions_text(s['post']))}")
        elif kind == "loop":
            _add_steps(node.add(f"[yellow]loop until[/] {_line(condition_text(s.get('until', {})))}"), s.get("steps"), counter)
        elif kind == "conditional":
            cond = node.add(f"[magenta]if[/] {_line(condition_text(s.get('if', {})))}")
            _add_steps(cond.add("[magenta]then[/]"), s.get("then"), counter)
            if s.get("else"):
                _add_steps(cond.add("[magenta]else[/]"), s.get("else"), counter)
        elif kind == "routine":
            _add_steps(node.add(f"[blue]routine[/] {_line(s.get('name', ''))}"), s.get("steps"), counter)
        else:
            node.add(f"[red]unknown step type {_line(repr(kind))}[/]")


def program_tree(record: dict, status_note: str | None = None, narration: str = "") -> Tree:
    """The program record (status, program, provenance) as a tree; ``status_note`` says how the status was
    reached where that is not plain (stored, not re-checked; re-checked and changed); ``narration``: the
    segment's, where the record holds no program that says it (a failed one)."""
    status = record.get("status", "?")
    colour = {"valid": "green", "invalid": "yellow", "failed": "red"}.get(status, "white")
    program = record.get("program") or {}
    action = program.get("action") or {}
    root = Tree(f"[bold]{_line(record.get('narration_id'))}[/]  {_line(action.get('narration') or narration)}  "
                f"[{colour}]{_line(status)}[/]" + (f" [dim]({_line(status_note)})[/]" if status_note else "")
                + f" [dim]({_line(generator_text(*made_by(record)))})[/]")
    if program:
        root.add(_line(f"action: verb {action.get('verb')} ({action.get('verb_class')}), "
                      f"noun {action.get('noun')} ({action.get('noun_class')})"))
        root.add(f"[cyan]pre[/]  {_line(conditions_text(program.get('pre')))}")
        _add_steps(root.add("[bold]steps[/]"), program.get("steps"), [0])
        root.add(f"[green]post[/] {_line(conditions_text(program.get('post')))}")
    for e in record.get("errors") or []:  # (a request failure points nowhere in the program)
        root.add(f"[red]{_line(e['pointer']) + ': ' if e.get('pointer') else ''}{_line(e.get('message', ''))}[/]")
    return root


def flatten_for_storyboard(steps: list[dict], context: str = "") -> list[tuple[dict, str]]:
    """Sub-actions in execution order, each with the control flow around it ("loop until clean(plate)")."""
    out: list[tuple[dict, str]] = []
    for s in steps or []:
        kind = s.get("type")
        if kind == "sub_action":
            out.append((s, context))
        elif kind == "loop":
            out += flatten_for_storyboard(s.get("steps"), f"{context} repeat until {condition_text(s.get('until', {}))}".strip())
        elif kind == "conditional":
            cond = s.get("if", {})
            c, other = condition_text(cond), condition_text({**cond, "negated": not cond.get("negated")})
            out += flatten_for_storyboard(s.get("then"), f"{context} if {c}".strip())
            out += flatten_for_storyboard(s.get("else"), f"{context} if {other}".strip())  # (not "if not not")
        elif kind == "routine":
            out += flatten_for_storyboard(s.get("steps"), f"{context} routine {s.get('name', '')}".strip())
    return out


def steps_html(steps: list[dict]) -> str:
    parts = []
    for s in steps or []:
        kind = s.get("type")
        if kind == "sub_action":
            parts.append(f"<div class='step'><b>{esc(sub_action_text(s))}</b>"
                         + (f" <span class='muted'>- {esc(s['purpose'])}</span>" if s.get("purpose") else "")
                         + f"<div>pre: {_conds_html(s.get('pre'))}</div><div>post: {_conds_html(s.get('post'))}</div></div>")
        elif kind == "loop":
            parts.append(f"<div class='step loop'><b>loop until</b> {_conds_html([s.get('until', {})])}"
                         f"{steps_html(s.get('steps'))}</div>")
        elif kind == "conditional":
            parts.append(f"<div class='step conditional'><b>if</b> {_conds_html([s.get('if', {})])}"
                         f"<div><b>then</b>{steps_html(s.get('then'))}</div>"
                         + (f"<div><b>else</b>{steps_html(s.get('else'))}</div>" if s.get("else") else "") + "</div>")
        elif kind == "routine":
            parts.append(f"<div class='step routine'><b>routine {esc(s.get('name', ''))}</b>{steps_html(s.get('steps'))}</div>")
    return "".join(parts)


def _conds_html(cs: list[dict] | None) -> str:
    return "".join(f"<span class='cond'>{esc(condition_text(c))}</span>" for c in cs or []) or "<span class='muted'>-</span>"


conds_html = _conds_html
