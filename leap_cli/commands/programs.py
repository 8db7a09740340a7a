"""``leap generate-programs`` and ``leap validate-programs``."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from leap_cli.common import counted, lowercase, workdir_option
from leap_cli.io import shell_word
from leap_cli.progress import output_console
from leap_cli.report.terminal import printable

console = output_console()
err_console = output_console(stderr=True)


# What only an LLM backend reads: refused with the offline backend (generate_programs)
_REQUEST_OPTIONS = ("model", "base_url", "api_key_env", "concurrency", "workers_alias", "timeout", "max_retries",
                    "backoff", "temperature", "max_tokens", "extra_body", "repair_rounds", "price_in", "price_out",
                    "price_cached_in", "max_cost", "response_format")


def register(app: typer.Typer) -> None:
    app.command("generate-programs",
                help="Generate one action program per segment (offline baseline or an OpenAI-compatible LLM): "
                     "WORKDIR/descriptors/SPLIT.jsonl -> WORKDIR/programs/SPLIT.jsonl (resumable; an LLM's "
                     "replies are kept in programs/cache.sqlite and never paid twice).")(generate_programs)
    app.command("validate-programs",
                help="Re-validate program files: errors per record, coverage, histograms, JSON report.")(validate_programs)


def generate_programs(
    ctx: typer.Context,
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory (reads descriptors/, writes programs/)."),
    split: str = typer.Option(..., "--split", help="Split: train, val (validation) or test."),
    data: Path = typer.Option(None, "--data", help="Dataset root holding annotations/ (default WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (overrides --data)."),
    descriptors: Path = typer.Option(None, "--descriptors", help="Descriptor JSONL (default WORKDIR/descriptors/SPLIT.jsonl; "
                                                                 "narration-only records from the annotations when absent)."),
    out: Path = typer.Option(None, "--out", help="Programs JSONL (default WORKDIR/programs/SPLIT.jsonl)."),
    backend: str = typer.Option(None, "--backend", callback=lowercase, help="offline (the default: deterministic baseline, no network) or "
                                                     "openai (the only one with --batch-file/--ingest-batch)."),
    model: str = typer.Option("gpt-4o-mini", "--model", help="Model name sent to the endpoint (--backend openai)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                                                     "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once."),
    workers_alias: int = typer.Option(None, "--workers", min=1, hidden=True),  # old spelling of --concurrency
    timeout: float = typer.Option(60.0, "--timeout", min=0.001, help="Seconds for a whole reply (a slow local model "
                                  "may need minutes)."),
    max_retries: int = typer.Option(5, "--max-retries", min=0,
                                    help="Retries on 408/409/429/5xx/timeouts/connection errors before a record fails."),
    backoff: float = typer.Option(1.0, "--backoff", min=0.0, help="First retry delay in seconds (doubles, with jitter; "
                                                         "Retry-After wins)."),
    response_format: str = typer.Option("auto", "--response-format", callback=lowercase, help="auto (Structured Outputs; JSON mode if refused, "
                                        "then none), json_schema, json_object or none (no response_format: the prompt "
                                        "asks for JSON)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0, help="Sampling temperature."),
    max_tokens: int = typer.Option(2000, "--max-tokens", min=16, help="Most tokens a reply may have (a reasoning "
                                                                     "model's hidden reasoning counts too: raise it for those)."),
    extra_body: str = typer.Option(None, "--extra-body", help="JSON object of more request fields, sent as given, e.g. "
                                   "'{\"reasoning_effort\": \"low\"}' or vLLM's '{\"chat_template_kwargs\": "
                                   "{\"enable_thinking\": false}}'."),
    k: int = typer.Option(4, "--k", min=0, help="Exemplar programs per prompt."),
    repair_rounds: int = typer.Option(1, "--repair-rounds", min=0, help="Follow-up turns that send validation errors back."),
    limit: int = typer.Option(None, "--limit", min=0, help="Process at most this many pending segments (the first in "
                              "the split CSV's order; with --batch-file, write at most this many requests)."),
    shard: str = typer.Option(None, "--shard", help="i/n: process part i of n (i from 0, by video); writes SPLIT.shardIofN.jsonl (--out or --batch-file X.jsonl: X.shardIofN.jsonl)."),
    price_in: float = typer.Option(0.15, "--price-in", min=0.0, help="USD per 1M prompt tokens (for the cost estimate)."),
    price_out: float = typer.Option(0.60, "--price-out", min=0.0, help="USD per 1M completion tokens."),
    price_cached_in: float = typer.Option(0.075, "--price-cached-in", min=0.0, help="USD per 1M prompt tokens the provider "
                                                                          "read from its prompt cache."),
    max_cost: float = typer.Option(None, "--max-cost", min=0.0, help="Stop cleanly once the estimated spend on this output file "
                                                            "(all runs together, from the ledger) reaches this (USD)."),
    exemplars: Path = typer.Option(None, "--exemplars", help="Folder of exemplar programs (default: the package's prompts/exemplars)."),
    system_prompt: Path = typer.Option(None, "--system-prompt", help="System prompt file (default: the package's prompts/system.md)."),
    retry_failed: bool = typer.Option(False, "--retry-errors", help="Redo the records whose status is failed (and the invalid ones whose repair turn's request failed)."),
    retry_failed_alias: bool = typer.Option(False, "--retry-failed", hidden=True),  # old spelling of --retry-errors
    retry_invalid: bool = typer.Option(False, "--retry-invalid", help="Ask again for the records whose status is "
                                       "invalid (their cached replies are not used: paid again)."),
    force: bool = typer.Option(False, "--force", help="Start the output over when it was made with other settings "
                                                      "(backend, model, prompt, exemplars, k, ...); else that is refused."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the prompt of one segment and make no call; with "
                                 "--backend openai also the run's requests and estimated cost (on stderr)."),
    narration_id: str = typer.Option(None, "--narration-id", help="With --dry-run: the segment to show."),
    batch_file: Path = typer.Option(None, "--batch-file", help="Write OpenAI Batch API requests to this JSONL instead of "
                                    "calling (more than one file's limits: FILE-1-of-N.jsonl ..., one batch each)."),
    batch_max_requests: int = typer.Option(None, "--batch-max-requests", min=1, help="With --batch-file: requests per "
                                           "file at most (default 50000, the Batch API's limit)."),
    batch_max_mb: float = typer.Option(None, "--batch-max-mb", min=0.001, help="With --batch-file: size of a file at "
                                       "most, in MB of 10^6 bytes (default 200, the Batch API's limit)."),
    ingest_batch: list[Path] = typer.Option(None, "--ingest-batch", metavar="FILE", help="Validate and merge a Batch API output JSONL "
                                            "(repeat it for the outputs of several batches: read as one)."),
) -> None:
    from leap_cli.common import ShardSpec, shard_out
    from leap_cli.errors import LeapError
    from leap_cli.programs.generate import GenerateConfig, dry_run as build_dry_run, generate_programs as run

    if response_format not in ("auto", "json_schema", "json_object", "none"):  # checked where given, offline runs too
        raise LeapError(f"--response-format {response_format!r} is not a format",
                        fix="use auto, json_schema, json_object or none")
    ingest_batch = ingest_batch or None  # (typer gives [] when it is not given)
    # (else unheard; the ingest's command is the --batch-file's with --ingest-batch in its place, as it says)
    if batch_file is None and ingest_batch is None and (batch_max_requests, batch_max_mb) != (None, None):
        raise LeapError(f"{'--batch-max-requests' if batch_max_requests is not None else '--batch-max-mb'} sizes the "
                        "files of --batch-file", fix="add --batch-file FILE, or drop it")
    say = console  # the Batch modes' messages: on stderr where the requests go to a stream (/dev/stdout | gzip)
    if batch_file is not None and ingest_batch is not None:  # (the requests were written, the ingest left out:
        # submitted, they paid again for the results given)
        raise LeapError("--batch-file and --ingest-batch are two runs: ingest the results first, then write the "
                        "requests of what is still pending", fix="run with --ingest-batch FILE, then again with "
                                                                 "--batch-file FILE")
    if ingest_batch is not None and sum(str(f) == "-" for f in ingest_batch) > 1:  # (the second read nothing)
        raise LeapError("--ingest-batch - is given twice: stdin can be read once", fix="give it once, the other "
                        "results as files (or cat them into one stream)")
    if dry_run and ingest_batch is not None:
        raise LeapError("--dry-run prints a prompt; --ingest-batch reads results", fix="give one of the two")
    if batch_file is not None and str(batch_file) == "-":  # (the usual spelling of stdout; it wrote a file "-")
        batch_file = Path("/dev/stdout")
    if batch_file is not None:
        import sys

        from leap_cli.io import refuse_folder
        from leap_cli.programs.batch import batch_stream, own_std

        refuse_folder(batch_file)
        if batch_stream(batch_file):  # (the messages on the other one where the requests go to stderr)
            say = output_console(stderr=own_std(batch_file) is not sys.stderr)
    if batch_file is not None or ingest_batch is not None:
        if backend not in (None, "openai"):
            raise LeapError(f"--backend {backend} has no Batch API", fix="leave --backend out, or pass --backend openai, "
                            "with --batch-file or --ingest-batch")
        if backend is None:  # the default (offline) has no Batch API: say which backend and model the requests name
            say.print(escape(f"note: the Batch API is OpenAI's: the requests name the model {model} (--model to change)"),
                      highlight=False)
        backend = "openai"
    backend = backend or "offline"
    concurrency = workers_alias or concurrency
    if extra_body is not None:
        import json

        try:
            extra_body = json.loads(extra_body)
        except json.JSONDecodeError as e:
            raise LeapError(f"--extra-body is not JSON ({e.msg} at column {e.colno})",
                            fix='give a JSON object, e.g. --extra-body \'{"reasoning_effort": "low"}\'') from None
    if backend == "offline":  # (unheard: a run meant for an LLM wrote the baseline's programs, exit 0)
        from leap_cli.common import given_options

        unused = given_options(ctx, *_REQUEST_OPTIONS)
        if unused:
            raise LeapError(f"{', '.join(unused)} {'is an option' if len(unused) == 1 else 'are options'} of the "
                            "LLM's requests; the backend is offline (the default: the deterministic baseline, no LLM)",
                            fix="add --backend openai to ask an LLM, or drop " + ("it" if len(unused) == 1 else "them"))
    retry_failed = retry_failed or retry_failed_alias
    spec = ShardSpec.parse(shard)
    out = shard_out(out, spec) if out is not None else None
    if batch_file is not None and say is console:  # (a stream, /dev/stdout, as it is)
        batch_file = shard_out(batch_file, spec)  # (a Slurm array's parts wrote one file over another)
    cfg = GenerateConfig(workdir=workdir, split=split, data=data, annotations=annotations, descriptors=descriptors,
                         out=out, backend=backend, model=model, base_url=base_url, api_key_env=api_key_env,
                         concurrency=concurrency, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         response_format=response_format, temperature=temperature, max_tokens=max_tokens,
                         extra_body=extra_body, k=k, repair_rounds=repair_rounds,
                         limit=limit, shard=spec, price_in=price_in, price_out=price_out,
                         price_cached_in=price_cached_in, max_cost=max_cost, exemplars=exemplars, system_prompt=system_prompt,
                         retry_failed=retry_failed, retry_invalid=retry_invalid, force=force)
    if dry_run:  # the prompt as it is sent (stdout: not wrapped at the terminal's width)
        if backend != "openai":
            typer.echo(build_dry_run(cfg, narration_id))
            return
        from leap_cli.programs.backends import url_secrets
        from leap_cli.programs.generate import dry_run_and_estimate

        url_secrets(base_url or os.environ.get("OPENAI_BASE_URL") or "")  # (refused as the run refuses it)
        prompt, estimate = dry_run_and_estimate(cfg, narration_id)
        typer.echo(prompt)
        for line in estimate.lines():  # what the run would ask for and cost, before it is paid (stderr)
            err_console.print(escape(line), highlight=False)
        return
    if narration_id is not None:  # without --dry-run it would go unheard: every pending segment, paid calls too
        raise LeapError("--narration-id only chooses the segment whose prompt --dry-run prints",
                        fix="add --dry-run to see that prompt, or drop --narration-id; --limit N generates a few")
    if batch_file is not None:
        from leap_cli.programs.batch import BATCH_MAX_MB, BATCH_MAX_REQUESTS, size_text, write_batch_file

        stats, parts, failures = Counter(), [], []
        batch_max_requests = batch_max_requests or BATCH_MAX_REQUESTS
        batch_max_mb = batch_max_mb or BATCH_MAX_MB
        if max_cost is not None:  # (nothing is paid until the batch runs: the ingest adds it to the ledger)
            say.print(escape("note: --max-cost caps live requests; --batch-file pays nothing when it writes, and the "
                             "ingest adds what its results cost to the ledger"), highlight=False)
        n = write_batch_file(cfg, batch_file, stats, parts=parts, failures=failures,
                             max_requests=batch_max_requests, max_mb=batch_max_mb)
        written = [p for p in parts if p.requests]
        if cached := {k.removeprefix("cached_"): v for k, v in stats.items() if k.startswith("cached_")}:
            k = sum(cached.values())
            whose = "segments' replies were" if k != 1 else "segment's reply was"
            say.print(escape(f"{k} {whose} in the program cache (an earlier run or ingest): no request for "
                             f"{'them' if k != 1 else 'it'}; "
                             f"{'their records' if k != 1 else 'its record'} written to {cfg.out_path} ("
                             + ", ".join(f"{s} {v}" for s, v in sorted(cached.items())) + ")"
                             + ("; --retry-invalid asks for the invalid ones anew" if cached.get("invalid") else "")),
                      highlight=False, soft_wrap=True)
        for p in parts:
            if p.removed:
                say.print(escape(f"removed {p.path}, an earlier --batch-file's input"), highlight=False,
                          soft_wrap=True)
        if len(written) > 1:
            say.print(escape(f"wrote {n} Batch API requests to {len(written)} files (at most {batch_max_requests} "
                             f"request{'s' if batch_max_requests != 1 else ''} and {batch_max_mb:g} MB each):"),
                      highlight=False)
            for p in written:
                say.print(escape(f"  {p.path}: {p.requests} request{'s' if p.requests != 1 else ''}, "
                                 f"{size_text(p.bytes)}"), highlight=False, soft_wrap=True)
            say.print(escape("submit each as a batch of its own, then ingest their outputs in one run, and each "
                             "batch's error file where it has one: this command with --ingest-batch RESULTS-1.jsonl "
                             "--ingest-batch RESULTS-2.jsonl ... in place of --batch-file"), highlight=False)
        elif n:
            over = n > batch_max_requests or written[0].bytes > batch_max_mb * 1e6  # (a stream: warned of above)
            say.print(escape(f"wrote {n} Batch API request{'s' if n != 1 else ''} to {batch_file}"
                             + ("" if str(batch_file) == os.devnull else "; " + (
                                 "split it into files within the limits, submit each" if over else "submit it")
                                 + ", then run this command with --ingest-batch RESULTS.jsonl (and "
                                   "--ingest-batch ERRORS.jsonl, the batch's error file, where it has one) in place "
                                   "of --batch-file")), highlight=False, soft_wrap=True)
        else:  # (it said "submit it" of an empty file)
            why = ("the input holds no segment" + (f" (part {spec.index}/{spec.count})" if spec.count > 1 else "")
                   if not stats["segments"] else "every pending segment's reply was in the program cache" if cached
                   else f"--limit 0 ({counted(stats['pending'], 'segment')} pending)" if
                   stats["pending"] else f"every segment has a record in {cfg.out_path}")
            say.print(escape(f"no request to write: {why}; {batch_file} holds none"), highlight=False)
        for line in not_valid_notes(stats):
            say.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
        from leap_cli.outcome import Outcome

        # the records made from the cache end as a live run's: listed when not valid, and with no request written,
        # every one of them failed or invalid is a stage where all failed (exit 3); a request written is work done
        outcome = Outcome("generate-programs --batch-file")
        outcome.attempt(sum(v for k, v in stats.items() if k.startswith("cached_")))
        print_failures(failures, outcome, console=say)
        for line in outcome.lines():
            say.print(escape(line), highlight=False, style="red")
        if not n:
            outcome.exit()
        return
    if ingest_batch is not None:
        from leap_cli.programs.batch import ingest_batch as ingest

        failures: list[tuple[str, str]] = []
        spent: dict = {}
        counts = ingest(cfg, ingest_batch, failures, spent)
        kept = counts.pop("invalid_kept", 0)  # (also counted already_present)
        before = counts.pop("asked_before_the_clip_changed", 0)  # (also counted by status)
        other = counts.pop("other_settings", 0)  # (also counted by status)
        n = sum(v for k, v in counts.items() if k != "repeated")
        new = sum(counts[k] for k in ("valid", "invalid", "failed"))
        console.print(escape((f"ingested {n} result{'s' if n != 1 else ''} into {cfg.out_path}: " if new else
                              f"nothing new in {n} result{'s' if n != 1 else ''} for {cfg.out_path}: ")
                             + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))), highlight=False)
        if spent["requests"]:
            console.print(escape(f"cost: ${spent['cost']:.4f} for {spent['requests']} request"
                                 f"{'s' if spent['requests'] != 1 else ''} at the Batch API's price (half of --price-in and "
                                 f"--price-out); spent on this output so far ${spent['total']:.4f}"),
                          highlight=False)
        if before:
            one = before == 1
            console.print(escape(f"note: {before} of the results {'was' if one else 'were'} asked for before "
                                 f"{'its' if one else 'their'} clip changed (its descriptor record was made again, or "
                                 f"its annotation changed): {'it is' if one else 'they are'} kept as the old clip's "
                                 f"program{'' if one else 's'}, and the next --batch-file asks for "
                                 f"{'it' if one else 'them'} again"),
                          style="yellow", highlight=False)
        if other:
            one = other == 1
            console.print(escape(f"note: {other} of the records written {'was' if one else 'were'} asked for with "
                                 "other settings or another prompt than this ingest's (a --batch-file of other "
                                 "--model, --temperature, --response-format, --extra-body or exemplars, "
                                 "or of an older leap): kept as records of this output all the same (their provenance "
                                 "says other_settings; they count as done), not put in the program cache; a valid "
                                 f"result of these settings ingested later replaces {'it' if one else 'them'}"),
                          style="yellow", highlight=False)
        from leap_cli.programs.generate import batch_pending, batch_pending_path

        if left := len(batch_pending(cfg.out_path)["ids"]):  # (ingesting the outputs without the error files: no word)
            console.print(escape(f"note: {left} segment{'s' if left != 1 else ''} of the Batch requests written for "
                                 f"{cfg.out_path} {'have' if left != 1 else 'has'} no result yet "
                                 f"({batch_pending_path(cfg.out_path).name} lists them): a batch not back yet, or "
                                 "the requests in a batch's error file (OpenAI writes those that failed or expired "
                                 "apart from the output): ingest it too"), style="yellow", highlight=False)
        if kept:
            console.print(escape(f"note: {kept} of the already present {'is an invalid record' if kept == 1 else 'are invalid records'} "
                                 "that the results did not replace: give --retry-invalid to --ingest-batch too (as to "
                                 "--batch-file)"),
                          highlight=False, style="yellow")
        from leap_cli.outcome import Outcome

        outcome = Outcome("generate-programs --ingest-batch")  # 3 when every result ingested now failed
        # (results superseded by a better one for their segment are not records of their own)
        outcome.attempt(sum(v for k, v in counts.items() if k not in ("already_present", "superseded", "repeated")))
        print_failures(failures, outcome)  # (it said "1 x failed (see leap validate-programs)", not why)
        for line in outcome.lines():
            console.print(escape(line), highlight=False, style="red")
        outcome.exit()
        return
    from leap_cli.progress import stage_progress

    with stage_progress(f"generate-programs {cfg.split_name}", TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("programs", total=None)
        summary = run(cfg, on_start=lambda n: progress.update(task, total=n),
                      on_record=lambda r: progress.advance(task),
                      on_waiting=lambda why: progress.update(task, description=f"programs ({why})" if why
                                                             else "programs"), reraise=False)
    console.print(escape(f"input: {summary.source}"), highlight=False)
    table = Table(title=f"generate-programs -> {printable(summary.out, one_line=True)}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    st = summary.statuses
    done = sum(st.values())
    rows = [("segments done in this run", f"{done} of {summary.total}" if done < summary.total else done),
            ("resumed (already done)", resumed_text(summary)),
            ("valid / invalid / failed", f"{st.get('valid', 0)} / {st.get('invalid', 0)} / {st.get('failed', 0)}")]
    if backend != "offline":  # (no request, no token, no cost: rows of zeros said nothing)
        rows += [("backend calls (incl. retries)", summary.requests), ("cache hits", summary.cache_hits),
                 ("prompt / completion tokens", f"{summary.usage['prompt_tokens']} / {summary.usage['completion_tokens']}"
                  + (f" ({summary.usage['cached_tokens']} of the prompt's from the provider's cache)"
                     if summary.usage.get("cached_tokens") else "")),
                 ("estimated cost of this run", f"${summary.cost:.4f}"),
                 ("spent on this output so far", f"${summary.spent_before + summary.cost:.4f}")]
    for what, value in rows + [("seconds", f"{summary.seconds:.1f}")]:
        table.add_row(what, str(value))
    console.print(table)
    if spec.count > 1 and not summary.total and not summary.resumed and limit is None:  # (it said "0" and no more)
        console.print(f"[yellow]note:[/] part {spec.index}/{spec.count} holds no segment of {escape(summary.source)}: "
                      "parts are whole videos, dealt in the split's annotation order as extract deals them, and with "
                      "fewer videos than parts some parts are empty", highlight=False)
    if summary.stopped:
        console.print(f"[yellow]stopped early:[/] {escape(str(summary.stopped))}")
    if summary.left_out:  # (not failed: nothing was asked for them; a run where all were left out exits 0)
        console.print(f"[yellow]note:[/] {escape(summary.left_out)}", highlight=False)
    for line in resumed_notes(summary):
        console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
    for line in endpoint_notes(summary):
        console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
    if summary.interrupted is not None:  # what was done and spent is shown, then the stop goes on as Ctrl-C's
        import signal

        signal.raise_signal(summary.interrupted)
    if summary.error is not None:  # (after what was done and spent: the error is the last line, exit 2)
        raise summary.error
    from leap_cli.outcome import Outcome

    outcome = Outcome("generate-programs")  # the exit rule of the record-writing stages: 3 when every record failed
    outcome.attempt(sum(st.values()))
    print_failures(summary.failures, outcome)
    for line in outcome.lines():
        console.print(escape(line), highlight=False, style="red")
    for line in not_valid_notes(summary.not_valid, this_run=True, said=bool(summary.held_seconds)):
        console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
    outcome.exit()


def resumed_text(summary) -> str:
    """The resumed count, with the failed and invalid among them."""
    bad = summary.resumed_not_valid
    invalid = bad.get("invalid", 0) + bad.get("repair", 0)  # ("repair": invalid, a repair turn still to ask)
    parts = [f"{n} {k}" for k, n in (("failed", bad.get("failed", 0)), ("invalid", invalid)) if n]
    return f"{summary.resumed}" + (f" ({', '.join(parts)})" if parts else "")


def resumed_notes(summary) -> list[str]:
    """What to do about the records of earlier runs that failed or are invalid (a rerun that only resumed them
    looked like a success)."""
    bad = summary.resumed_not_valid
    notes = []
    if summary.reclipped:  # (a program of another clip's text or labels was kept before)
        n = summary.reclipped
        notes.append(f"{n} record{'s' if n != 1 else ''} of earlier runs {'were' if n != 1 else 'was'} made from a "
                     "clip that has changed since (its descriptor record was made again, or its annotation changed): "
                     "made again; then run build-shards for this split (it writes again the samples whose programs changed, "
                     "no --force)")
    return notes + not_valid_notes(bad)


def not_valid_notes(bad, *, this_run: bool = False, said: bool = False) -> list[str]:
    """What to do about the failed and invalid records (counts by ``generate.not_valid_kind``) that a run kept as
    done: an earlier run's, or with ``this_run`` the ones it wrote (a plain rerun asks none of them again); ``said``:
    a held server's note has named --retry-errors for the failed already."""
    whose = "written by this run" if this_run else "done before"

    def of(n: int) -> str:
        return f"{n} of the records {whose} {'is' if n == 1 else 'are'}"

    notes = []
    if bad.get("failed") and not said:
        notes.append(f"{of(bad['failed'])} failed (see leap validate-programs): "
                     + ("once the cause is mended, " if this_run else "") + "add --retry-errors to ask for "
                     + ("it again" if bad["failed"] == 1 else "them again"))
    if bad.get("repair"):
        notes.append(f"{of(bad['repair'])} invalid with a repair turn to ask (its request failed, or the reply came "
                     "from a Batch, which asks none): a run with --retry-errors (without --batch-file) sends that "
                     "turn, the earlier replies read from the cache")
    if bad.get("invalid"):
        notes.append(f"{of(bad['invalid'])} invalid: add --retry-invalid to ask for "
                     + ("it again (its reply is not taken from the cache)" if bad["invalid"] == 1 else
                        "them again (their replies are not taken from the cache)"))
    return notes


def print_failures(failures: list[tuple[str, str]], outcome, console: Console = console) -> None:
    """The first ten records that failed or are invalid, with their cause, and each counted by cause in ``outcome``."""
    for nid, msg in failures[:10]:
        console.print(f"[red]{printable(nid, one_line=True)}[/]: {printable(msg, one_line=True)}", highlight=False)
    if len(failures) > 10:
        console.print(f"... and {len(failures) - 10} more (see leap validate-programs)")
    for _, msg in failures:
        outcome.fail(failure_cause(str(msg)))


def endpoint_notes(summary) -> list[str]:
    """What the endpoint's refusals and timeouts in this run mean for the next one."""
    notes = []
    if summary.rate_limited:
        low, steady = summary.lowest_concurrency, summary.steady_concurrency
        refused = counted(summary.rate_limited, "request")
        if low is None:
            notes.append(f"the server refused {refused} with HTTP 429 (rate limit): lower "
                         "--concurrency")
        elif steady is not None and steady >= summary.concurrency:
            notes.append(f"the server refused {refused} with HTTP 429 (rate limit); leap cut the "
                         f"requests in flight to {low}, and the run ended at --concurrency {steady} again without one")
        else:
            notes.append(f"the server refused {refused} with HTTP 429 (rate limit); leap cut the "
                         f"requests in flight to {low}" + (f", and {steady} went without one" if steady else "") +
                         f": lower --concurrency (e.g. --concurrency {steady or low})")
    if summary.held_seconds:
        failed = summary.statuses.get("failed", 0)
        notes.append(f"the server stopped answering for {summary.held_seconds:.0f} s in all; meanwhile leap asked one "
                     "request at a time" + (f": rerun with --retry-errors for the {counted(failed, 'record')} "
                                            "written failed" if failed else ""))
    if summary.timed_out:
        one = summary.timed_out == 1
        notes.append(f"{counted(summary.timed_out, 'request')} timed out (--timeout) and {'was' if one else 'were'} "
                     f"abandoned: the server may still have generated and billed {'it' if one else 'them'}; "
                     f"{'it is' if one else 'they are'} not in the estimated cost")
    return notes


CAUSE_WIDTH = 100  # characters of a failure's cause in the summary


def failure_cause(message: str) -> str:
    """A record's first error without what varies from record to record (attempts, addresses, where in the reply
    JSON broke), so that the summary counts records by cause."""
    message = re.sub(r": line \d+ column \d+", "", message)
    message = re.sub(r"\bput \d+ characters in\b", "put text in", message)  # (a thinking model's every reply)
    cause = ": ".join(message.split(" after ")[0].split(": ")[:2])
    # whole words and no half parenthesis: the details in parentheses (the record's own line has them) go first
    while (shorter := re.sub(r"\s*\([^()]*\)", "", cause)) != cause and len(cause) > CAUSE_WIDTH:
        cause = shorter
    if "(" in cause and len(cause) > CAUSE_WIDTH:  # (one left open: the message was cut before its end)
        cause = cause[:cause.index("(")].rstrip()
    if len(cause) <= CAUSE_WIDTH:
        return cause
    cut = cause[:CAUSE_WIDTH - 3]
    words = cut.rsplit(" ", 1)[0]  # (a long word, a token or a URL, is cut inside: "request failed:..." said nothing)
    return (words if len(words) >= CAUSE_WIDTH // 2 else cut) + "..."


def _summary_table(title: str, cells) -> Table:
    """One row of figures under their names; a column of them where the row is wider than the terminal (its
    numbers were cut to "1…")."""
    from rich.measure import Measurement

    row = Table(title=title)
    for name, _ in cells:
        row.add_column(name, justify="right", no_wrap=True)
    row.add_row(*(str(v) for _, v in cells))
    if Measurement.get(console, console.options.update_width(10_000), row).maximum <= console.width:
        return row
    column = Table(title=title, show_header=False)
    column.add_column("what")
    column.add_column("value", justify="right")
    for name, value in cells:
        column.add_row(name, str(value))
    return column


def _default_report(workdir: Path, split: str, files: list[Path], part: tuple[list[int], int] | None) -> Path:
    """Where validate-programs writes its report without ``--report``: beside the one file given
    (``NAME.report.json``: a scratch file's report never replaces the stage's); beside the first of --shard parts of
    one count, named as their merge is where they are all there, else by the parts (``train.shard0+2of4.report.json``:
    a report of some parts, from one folder or several, never replaces the whole split's); else the split's
    (``WORKDIR/programs/SPLIT.report.json``, also for several other files)."""
    if len(files) == 1:
        return files[0].with_name(files[0].name.removesuffix(".jsonl") + ".report.json")
    if files and part is not None:
        indices, count = part
        shown = "" if len(indices) == count else f".shard{'+'.join(map(str, indices))}of{count}"
        return files[0].with_name(re.sub(r"\.shard\d+of\d+(?=\.)", shown, files[0].name, count=1)
                                  .removesuffix(".jsonl") + ".report.json")
    return workdir / "programs" / f"{split}.report.json"


def validate_programs(
    files: list[Path] = typer.Argument(None, metavar="FILES", help="Program JSONL files (default WORKDIR/programs/SPLIT.jsonl)."),
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory (report goes to programs/)."),
    split: str = typer.Option(None, "--split", help="train, val (validation) or test: the split the files are checked against (required without FILES; "
                                                    "else the one their names say, e.g. train.jsonl, and files that "
                                                    "name different splits are refused). Coverage counts that "
                                                    "split's segments only; records of other ids are counted apart."),
    data: Path = typer.Option(None, "--data", help="Dataset root holding annotations/ (default WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (overrides --data)."),
    report: Path = typer.Option(None, "--report", help="Report path (default: beside the one FILE given, "
                                                         "NAME.report.json for NAME.jsonl; some parts of "
                                                         "a sharded run: named by them, train.shard0+2of4.report.json; "
                                                         "else WORKDIR/programs/SPLIT.report.json)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when any record is invalid or failed, "
                                                        "a line is not a program record, or a record is not a "
                                                        "segment of the split."),
    show: int = typer.Option(10, "--show", min=0, help="Records with errors to print."),
    html: str = typer.Option(None, "--html", metavar="<path>", help="Also write a page with the coverage and the "
                                                                  "distributions as plots; a folder (pages/): the "
                                                                  "report's name with .html in it."),
) -> None:
    from leap_cli.common import (SPLIT_NAMES, check_record_file, merged_input, normalize_split, page_out,
                                 refuse_overwrite)
    from leap_cli.errors import LeapError
    from leap_cli.io import atomic_write_json, refuse_folder
    from leap_cli.programs.generate import GenerateConfig, annotations_for
    from leap_cli.programs.report import split_of, validate_records

    split_name = normalize_split(split) if split else None
    given_files = bool(files)
    if not files:
        if split_name is None:
            raise LeapError("which programs?", fix="pass --split SPLIT (WORKDIR/programs/SPLIT.jsonl) or FILES")
        files = [merged_input(workdir / "programs" / f"{split_name}.jsonl")]
    files = [merged_input(f) for f in files]  # (a file given is checked against --shard parts beside it too)
    for f in files:
        refuse_folder(Path(f), "program file")
        if not Path(f).is_file():
            raise LeapError("program file not found", path=f,
                            fix="check the path, or make it first: leap generate-programs "
                                f"--workdir {shell_word(workdir)} --split {split_name or 'SPLIT'}")
        check_record_file(f, "program")
    ann = annotations_for(GenerateConfig(workdir=workdir, data=data, annotations=annotations))
    if ann is None:
        raise LeapError("the EPIC class files are needed to validate verbs and objects",
                        path=Path(workdir) / "kitchen" / "annotations",
                        fix="pass --data ROOT (holding annotations/) or --annotations DIR")
    if split_name is None:
        # every file is checked against one split: the one the names say (a name that says none is taken to be
        # of it), never the first name's alone
        named = {Path(f).name: normalize_split(split_of(Path(f))) for f in files
                 if split_of(Path(f)).strip().lower() in SPLIT_NAMES}
        if not named:
            raise LeapError(f"the file name does not name a split ({split_of(Path(files[0]))!r})", path=files[0],
                            fix="pass --split train, val or test")
        if len(set(named.values())) > 1:
            raise LeapError("the files name different splits ("
                            + ", ".join(f"{name}: {s}" for name, s in named.items()) + ")",
                            fix="validate one split at a time, or pass --split to check all of them against one")
        split_name = next(iter(named.values()))
    from leap_cli.io import part_of

    parts = [part_of(f) for f in files]
    part = None  # every file a --shard part of one count: the coverage of those parts, not of the whole split
    if all(parts) and len({n for _, n in parts}) == 1:
        part = (sorted({i for i, _ in parts}), parts[0][1])
    out = report or _default_report(workdir, split_name, [Path(f) for f in files] if given_files else [], part)
    refuse_overwrite(out, files, "--report", "json")
    html = page_out(html, Path(out).with_suffix(".html").name)
    if html:
        refuse_overwrite(html, [*files, out], "--html", "html")
    segments = {s.narration_id: s for s in ann.segments(split_name)} if ann.has_split(split_name) else None
    rep = validate_records(list(files), ann.verbs, ann.nouns, segments, part=part)
    rep["split"] = split_name
    cov = rep["coverage"]
    if segments is not None and rep["records"] and cov["not_in_split"] == rep["records"]:
        # (build-shards refuses such a file too) a file of another split: its report, beside it, would be
        # replaced by one that counts none of its records
        named = split_of(Path(files[0])).strip().lower()
        none = "the 1 record is not" if rep["records"] == 1 else f"none of the {rep['records']} records is"
        raise LeapError(f"{none} a segment of the {split_name} split (e.g. "
                        f"{', '.join(cov['not_in_split_examples'][:3])})", path=files[0] if len(files) == 1 else None,
                        fix=(f"check them against --split {normalize_split(named)}, the split their name says"
                             if named in SPLIT_NAMES and normalize_split(named) != split_name else
                             f"pass the program file of the {split_name} split, or the --split of these records"))
    atomic_write_json(out, rep)
    if not rep["records"] and not rep["malformed"]:  # an empty file: one line, not a table of zeros above it
        from leap_cli.outcome import EXIT_ALL_FAILED

        console.print(f"[red]no program record in {escape(', '.join(map(str, files)))}[/]: run leap "
                      "generate-programs for that split (an empty file is what a run that wrote nothing leaves)",
                      highlight=False)
        raise typer.Exit(EXIT_ALL_FAILED)
    for m in rep["malformed"][:show]:  # (soft_wrap: a long path is not broken mid-name)
        console.print("[red]" + printable(f"{m['file']} [line {m['line']}]", one_line=True) + "[/] "
                      + printable(m["problem"], one_line=True), highlight=False, soft_wrap=True)
    if len(rep["malformed"]) > show:
        console.print(f"[red]... and {len(rep['malformed']) - show} more lines that are not program records[/]")
    if rep["malformed"]:
        console.print("delete or fix those lines (generate-programs writes a deleted record again when it resumes)",
                      highlight=False)
    for r in rep["errors"][:show]:
        first = r["errors"][0] if r["errors"] else {"pointer": "", "message": r["status"]}
        where = f"{first['pointer']} " if first["pointer"] else ""  # (a failed request points nowhere)
        console.print(f"[red]{printable(r['narration_id'], one_line=True)}[/] "
                      + printable(f"{r['status']}: {where}{first['message']}", one_line=True)
                      + (f" (+{len(r['errors']) - 1} more)" if len(r["errors"]) > 1 else ""), highlight=False,
                      soft_wrap=True)
    if len(rep["errors"]) > show:
        console.print(f"[red]... and {len(rep['errors']) - show} more records with findings[/] (the report lists "
                      "them all)", highlight=False)
    flow = rep["histograms"]["control_flow"]
    console.print(_summary_table(f"validate-programs ({split_name})", (
        ("records", rep["records"]), *((s, rep["statuses"][s]) for s in ("valid", "invalid", "failed")),
        ("dups", rep["duplicates"]), ("coverage", f"{cov['valid']}/{cov['segments']} ({cov['fraction']:.1%})"),
        ("loop steps", flow.get("loop", 0)), ("cond steps", flow.get("conditional", 0)),
        ("routine steps", flow.get("routine", 0)))))
    console.print(escape(f"coverage: valid programs over the {cov['of']}"
                         + (f" (the annotations hold no {split_name} split: labels not checked)"
                            if cov["of"] == "records" else "")), highlight=False)
    from leap_cli.programs.provenance import made_by_text

    console.print(printable(f"made by: {made_by_text(rep['made_by'])}", one_line=True), highlight=False)

    def top(h: dict) -> str:  # the 8 most frequent, and how many more (the JSON report holds them all)
        items = list(h.items())
        shown = ", ".join(f"{k} {v}" for k, v in items[:8]) or "none"
        return shown + (f", ... ({len(items) - 8} more in the report)" if len(items) > 8 else "")

    # names an LLM wrote and paths: printed as text, never as rich markup
    console.print(printable(f"verbs: {top(rep['histograms']['verbs'])}\nobjects: {top(rep['histograms']['objects'])}\n"
                         f"predicates: {top(rep['histograms']['predicates'])}\n"
                         f"sub-actions per program (count: programs): {top(rep['histograms']['steps'])}"),
                  highlight=False)
    if cov["not_in_split"]:
        n = cov["not_in_split"]
        console.print("[yellow]" + printable(f"{counted(n, 'record')} {'is not a segment' if n == 1 else 'are not segments'} "
                                         f"of the {split_name} split "
                                         f"(e.g. {', '.join(cov['not_in_split_examples'][:3])}): not counted in the "
                                         "coverage; check that the files are of this split") + "[/]",
                      highlight=False)
    console.print(escape(f"report: {out}"), highlight=False)
    if html:
        from leap_cli.io import atomic_write_text
        from leap_cli.report.programs_html import programs_report_html

        atomic_write_text(html, programs_report_html(rep))
        console.print(escape(f"page: {html}"), highlight=False)
    if not rep["records"]:  # not one line could be validated (the lines above say why; an empty file stopped above)
        from leap_cli.outcome import EXIT_ALL_FAILED

        raise typer.Exit(EXIT_ALL_FAILED)
    broken = [f"{n} {what}" for n, what in ((rep["statuses"]["invalid"], "invalid"),
                                            (rep["statuses"]["failed"], "failed"),
                                            (len(rep["malformed"]), "lines not program records"),
                                            (cov["not_in_split"], f"records not of the {split_name} split")) if n]
    if strict and broken:
        console.print(escape(f"--strict: {', '.join(broken)}"), style="red", highlight=False)
        raise typer.Exit(1)
