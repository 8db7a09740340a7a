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
