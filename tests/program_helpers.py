"""Small builders of action-program pieces shared by the tests."""


def cond(p, *args, neg=False):
    return {"predicate": p, "args": list(args), "negated": neg}


def sub(verb, a, b=None):
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": "right", "pre": [], "post": [],
            "purpose": ""}


def excerpt_annotations(root, rows: int | None = None):
    """``root/kitchen/annotations`` with EPIC's class files and the first ``rows`` rows of the validation excerpt
    (all when None) as the validation split; returns the annotations folder."""
    import shutil
    from pathlib import Path

    data = Path(__file__).parent / "data"
    ann = Path(root) / "kitchen" / "annotations"
    ann.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(data / "epic100" / name, ann / name)
    lines = (data / "epic" / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    (ann / "EPIC_100_validation.csv").write_text("\n".join(lines if rows is None else lines[: rows + 1]) + "\n")
    return ann


def excerpt_programs(rows: int) -> dict:
    """A valid program (the offline generator's) per segment of the first ``rows`` rows of the validation excerpt,
    by narration id."""
    from pathlib import Path

    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.offline import offline_program
    from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record

    data = Path(__file__).parent / "data"
    verbs = ClassVocab.from_csv(data / "epic100" / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(data / "epic100" / "EPIC_100_noun_classes.csv", "noun")
    ex = load_exemplars()
    segs = read_segments(data / "epic" / "EPIC_100_validation_excerpt.csv")[:rows]
    return {s.narration_id: offline_program(clip_info(narration_record(s), s), ex, verbs, nouns) for s in segs}


def server_config(workdir, server, **kw):
    """Generation of the validation split against a scripted server (``tests.programs_llm_server``), with the key in
    LEAP_TEST_KEY, short timeouts and backoffs, and prices of 1 and 2 USD per million tokens."""
    from leap_cli.programs.generate import GenerateConfig

    base = dict(workdir=workdir, split="val", backend="openai", model="test-model", base_url=server.base_url,
                api_key_env="LEAP_TEST_KEY", concurrency=4, timeout=2.0, max_retries=3, backoff=0.01, max_backoff=0.05,
                price_in=1.0, price_out=2.0)
    base.update(kw)
    return GenerateConfig(**base)
