"""``leap submit``: write (or ``--check``) an EPIC-KITCHENS-100 challenge submission zip."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from leap_cli.common import DEFAULT_WORKDIR, check_task, lowercase, workdir_option
from leap_cli.io import shell_word
from leap_cli.progress import output_console

console = output_console()


def register(app: typer.Typer) -> None:
    app.command("submit", help="Turn a test-split scores file into the official challenge zip (test.json), "
                               "or --check an existing zip. Refuses missing/extra narration ids, NaN/inf "
                               "scores and wrong class counts.")(submit)


def submit(
    scores: Path = typer.Option(None, "--scores", help="Scores file of the test split (leap's scores.pt or the "
                                                       "official .pt/.pkl results format; default: the work directory's "
                                                       "only run's eval/test/scores.pt)."),
    task: str = typer.Option(None, "--task", callback=lowercase, help="recognition or anticipation (sets the challenge; default: the "
                                                  "scores file's task, else recognition)."),
    out: Path = typer.Option(None, "--out", help="Zip to write (default WORKDIR/submission.zip)."),
    sls_pt: int = typer.Option(None, "--sls-pt", help="Supervision level, pre-training (0-5; "
                               "0: random initialisation; the three levels are required to write a zip)."),
    sls_tl: int = typer.Option(None, "--sls-tl", help="Supervision level, training labels (0-5)."),
    sls_td: int = typer.Option(None, "--sls-td", help="Supervision level, training data (0-5; "
                               "3 for a leap train run on the train split, 4 on train + val)."),
    with_actions: bool = typer.Option(False, "--with-actions", help="Anticipation only: add the 100 best "
                                      "'verb,noun' action scores per segment (official combination)."),
    check: Path = typer.Option(None, "--check", help="Check this existing submission zip instead of writing one."),
    data: Path = typer.Option(None, "--data", help="Dataset root holding annotations/ (default WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs "
                                     "(default DATA/annotations); gives the test ids and class counts."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", callback=workdir_option, help="Work directory of the pipeline."),
) -> None:
    from leap_cli.errors import LeapError
    from leap_cli.epic.annotations import open_annotations
    from leap_cli import submit as sub

    if task is not None:  # (said before a zip or a large scores file is read)
        check_task(task)
    if check is not None:  # --check reads the zip alone: options that write one would be ignored
        ignored = [name for name, value in (("--scores", scores), ("--out", out), ("--with-actions", with_actions or None),
                                            ("--sls-pt", sls_pt), ("--sls-tl", sls_tl), ("--sls-td", sls_td))
                   if value is not None]
        if ignored:
            raise LeapError(f"--check checks an existing zip; {', '.join(ignored)} would be ignored",
                            fix="check with --check ZIP alone, or write a submission without --check")
    ann = open_annotations(workdir, data, annotations)
    if check is not None:
        summary = sub.check_file(check, ann)
        if task is not None and summary["challenge"] != sub.CHALLENGES[task]:
            raise LeapError(f"a valid {summary['challenge']} submission, not the {sub.CHALLENGES[task]} that --task "
                            f"{task} asks for", path=check,
                            fix="submit it to its own challenge, or write the other one from that task's scores")
        title = "valid submission"
    else:
        if scores is None:  # the test scores of the work directory's one run
            from leap_cli.common import only_one

            runs = Path(workdir) / "runs"
            scores = only_one(sorted(runs.glob("*/eval/test/scores.pt")), "runs' test scores", runs,
                              fix="pass --scores runs/NAME/eval/test/scores.pt")
            if scores is None:
                raise LeapError("nothing to submit", fix="pass --scores FILE (from `leap evaluate --split test`) "
                                                         "or --check submission.zip")
            console.print(escape(f"scores: {scores} (the only test scores in {runs})"), highlight=False)
        out = out or Path(workdir) / "submission.zip"
        if out.suffix.lower() != ".zip":  # the server takes a zip holding test.json
            raise LeapError(f"--out {out} is not a .zip: the challenge server takes a zip holding test.json",
                            fix=f"pass --out {shell_word(out.with_suffix('.zip'))}")
        missing = [o for o, v in (("--sls-pt", sls_pt), ("--sls-tl", sls_tl), ("--sls-td", sls_td)) if v is None]
        if missing:  # no defaults: a level leap cannot know for the model that made the scores is not declared for it
            raise LeapError(f"{', '.join(missing)} not given: a submission declares the supervision levels (SLS) of "
                            f"the model", fix="pass all three; a `leap train` run is TD 3 (the train split), its PT "
                                              "and TL depend on its weights and targets: see docs/evaluate-submit.md")
        # checked here, as --check checks a zip's, in one line (typer's range check printed a usage box)
        sub.check_sls({"sls_pt": sls_pt, "sls_tl": sls_tl, "sls_td": sls_td})
        from leap_cli.evaluate.scores import load_scores, scores_task  # torch: not for --check
        from leap_cli.io import writer_of

        if (who := writer_of(Path(scores).parent)) is not None:  # (leap evaluate holds eval/SPLIT.lock as it scores:
            # these are the scores it will replace)
            raise LeapError(f"leap evaluate is writing the scores of this folder ({who}): these may be the ones it "
                            "replaces", path=scores, fix="wait for the evaluation to finish, then submit")
        loaded = load_scores(scores)
        task = task or scores_task(loaded) or "recognition"
        summary = sub.submit(loaded, ann, task, out, sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td,
                             with_actions=with_actions, source=str(scores))
        title = "submission written"
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(*_ROWS.get(k, lambda v: (k, str(v)))(v))
    console.print(table)
    console.print(escape(f"{check if check is not None else out}: {title}"), highlight=False)


# how the summary's fields read in the table: the score dicts' lengths are the class ids they cover (the largest
# id + 1, as the challenge's validator checks them), not the classes a data set uses
_ROWS = {"verbs": lambda v: ("verb scores per segment", str(v)), "nouns": lambda v: ("noun scores per segment", str(v)),
         "actions": lambda v: ("action scores (--with-actions)", "100 per segment" if v else "none")}
