"""The OpenAI Batch API path: write the requests as Batch input JSONL, later validate and merge the output.

Input line (``--batch-file OUT.jsonl``): ``{"custom_id": narration_id, "method": "POST", "url": "/v1/chat/completions",
"body": {"model", "messages", "temperature", "max_tokens", "response_format"}}``.
Output line (``--ingest-batch RESULTS.jsonl``, as the Batch API returns it): ``{"id", "custom_id",
"response": {"status_code", "body": <chat completion>}, "error"}``. Each reply is validated like a live one
(no repair round: a failing program is recorded ``invalid`` with its findings) and appended to the programs file.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from leap_cli.errors import LeapError
from leap_cli.io import JsonlAppender, atomic_path, read_jsonl
from leap_cli.programs.generate import GenerateConfig, ProgramGenerator, _setup, parse_reply
from leap_cli.programs.prompt import clip_info, prompt_hash
from leap_cli.programs.schema import Finding, strict_schema

BATCH_URL = "/v1/chat/completions"


def write_batch_file(cfg: GenerateConfig, path) -> int:
    """Write one Batch request per pending segment (those not yet in the programs file). Returns the count."""
    inputs, _, builder = _setup(cfg)
    done = {r["narration_id"] for r in read_jsonl(cfg.out_path)} if cfg.out_path.exists() else set()
    records = [r for r in inputs.records if r["narration_id"] not in done]
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if cfg.response_format == "json_object":
        fmt = {"type": "json_object"}
    else:
        fmt = {"type": "json_schema", "json_schema": {"name": "action_program", "strict": True, "schema": strict_schema()}}
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            info = clip_info(r, inputs.segments.get(r["narration_id"]))
            body = {"model": cfg.model, "messages": builder.messages(info), "temperature": cfg.temperature,
                    "max_tokens": cfg.max_tokens, "response_format": fmt}
            f.write(json.dumps({"custom_id": r["narration_id"], "method": "POST", "url": BATCH_URL, "body": body},
                               ensure_ascii=False) + "\n")
            n += 1
    return n


def ingest_batch(cfg: GenerateConfig, results_path) -> Counter:
    """Validate the Batch output and append its records to the programs file. Returns counts per status."""
    inputs, _, builder = _setup(cfg)
    by_id = {r["narration_id"]: r for r in inputs.records}
    gen = ProgramGenerator(cfg, inputs, _BatchBackend(cfg.model), None, builder)  # type: ignore[arg-type]
    counts: Counter = Counter()
    with JsonlAppender(cfg.out_path) as out:
        for i, line in enumerate(read_jsonl(results_path), start=1):
            nid = line.get("custom_id")
            if nid not in by_id:
                raise LeapError(f"custom_id {nid!r} is not a segment of the input", path=results_path,
                                record=f"line {i}", fix="ingest with the same --split/--descriptors as the batch file")
            info = gen.info(by_id[nid])
            resp = line.get("response") or {}
            body = resp.get("body") or {}
            usage = body.get("usage") or {}
            prov = {"backend": "openai-batch", "model": body.get("model") or cfg.model,
                    "prompt_hash": prompt_hash(builder.messages(info)), "attempts": 1,
                    "usage": {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)},
                    "seconds": 0.0, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": 1,
                    "cached": False, "batch_request_id": line.get("id")}
            program, findings = None, []
            if line.get("error") or resp.get("status_code") != 200:
                status = "failed"
                err = line.get("error") or {"message": f"HTTP {resp.get('status_code')}"}
                findings = [Finding("", f"batch request failed: {err.get('message', err) if isinstance(err, dict) else err}")]
            else:
                try:
                    text = body["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    text = ""
                program, findings = parse_reply(text)
                if program is not None:
                    findings = gen.check(program, info)
                status = "valid" if not findings else "invalid"
            written = out.write({"narration_id": nid, "status": status, "program": program,
                                 "errors": [f.to_dict() for f in findings], "provenance": prov})
            counts[status if written else "already_present"] += 1
    return counts


class _BatchBackend:
    name = "openai-batch"
    supports_schema = True

    def __init__(self, model: str):
        self.model = model
