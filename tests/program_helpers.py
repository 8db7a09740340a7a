"""Small builders of action-program pieces shared by the tests."""


def cond(p, *args, neg=False):
    return {"predicate": p, "args": list(args), "negated": neg}


def sub(verb, a, b=None):
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": "right", "pre": [], "post": [],
            "purpose": ""}
