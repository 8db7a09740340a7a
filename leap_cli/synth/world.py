"""What the synthetic kitchen knows: its verbs and nouns (a subset of EPIC's classes), how each looks and
sounds, which verb goes with which noun, and the true action program of each (verb, noun).

Verbs and nouns are EPIC class keys; their ids come from the packaged class files
(``leap_cli/resources/epic100_subset/``, real EPIC rows), so the kitchen's annotations use real ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leap_cli.epic.classes import ClassVocab

RESOURCE_DIR = "epic100_subset"


def class_file(name: str) -> Path:
    """Path of a packaged class file (``EPIC_100_verb_classes.csv`` / ``EPIC_100_noun_classes.csv``)."""
    return Path(str(resources.files("leap_cli.resources").joinpath(RESOURCE_DIR, name)))


def vocabularies() -> tuple[ClassVocab, ClassVocab]:
    return (ClassVocab.from_csv(class_file("EPIC_100_verb_classes.csv"), "verb"),
            ClassVocab.from_csv(class_file("EPIC_100_noun_classes.csv"), "noun"))


@dataclass(frozen=True)
class VerbSpec:
    key: str
    forms: tuple[str, ...]  # surface forms used in narrations (EPIC verb column style: hyphenated)
    nouns: tuple[str, ...]  # nouns it is narrated with
    weight: float  # how often it happens
    duration: tuple[float, float]  # seconds
    sound: str  # ground-truth sound label while it happens


PORTABLE = ("spoon", "plate", "knife", "pan", "bowl", "glass", "cup", "bottle", "onion", "board:chopping",
            "potato", "carrot", "tomato", "sponge", "towel")
VEG = ("onion", "potato", "carrot", "tomato")
FIXTURES = ("cupboard", "drawer", "fridge", "tap", "hob")

VERBS: dict[str, VerbSpec] = {v.key: v for v in [
    VerbSpec("take", ("take", "pick-up", "grab"), PORTABLE, 3.0, (1.0, 2.0), "silence"),
    VerbSpec("put", ("put", "put-down", "place"), PORTABLE, 3.0, (1.0, 2.0), "clatter"),
    VerbSpec("wash", ("wash", "rinse"), ("spoon", "plate", "knife", "pan", "bowl", "glass", "cup", "board:chopping",
                                          "potato", "carrot", "tomato"), 1.6, (2.5, 4.5), "running_water"),
    VerbSpec("open", ("open",), ("cupboard", "drawer", "fridge", "bottle"), 1.4, (1.0, 2.0), "silence"),
    VerbSpec("close", ("close", "shut"), ("cupboard", "drawer", "fridge", "bottle"), 1.4, (1.0, 2.0), "clatter"),
    VerbSpec("turn-on", ("turn-on", "switch-on"), ("tap", "hob"), 0.9, (0.8, 1.5), "running_water"),
    VerbSpec("turn-off", ("turn-off", "switch-off"), ("tap", "hob"), 0.9, (0.8, 1.5), "silence"),
    VerbSpec("cut", ("cut", "chop", "slice"), VEG, 1.3, (2.5, 4.5), "chopping"),
    VerbSpec("pour", ("pour",), ("water", "oil"), 0.8, (1.5, 3.0), "running_water"),
    VerbSpec("mix", ("stir", "mix"), ("pan", "bowl"), 1.0, (2.0, 4.0), "scraping"),
    VerbSpec("dry", ("dry",), ("plate", "glass", "cup", "knife", "spoon", "bowl", "pan"), 0.8, (2.0, 3.5), "rustling"),
    VerbSpec("shake", ("shake",), ("bottle", "pan"), 0.6, (1.0, 2.0), "rustling"),
    VerbSpec("peel", ("peel",), ("onion", "potato", "carrot"), 0.7, (2.5, 4.0), "scraping"),
    VerbSpec("scrape", ("scrape", "scrape-off"), ("plate", "board:chopping", "pan"), 0.6, (1.5, 3.0), "scraping"),
]}

# Surface forms a narration may use for a noun (all are instances of the EPIC class).
NOUN_FORMS: dict[str, tuple[str, ...]] = {
    "plate": ("plate", "dish"), "cup": ("cup", "mug"), "pan": ("pan", "saucepan"), "cupboard": ("cupboard", "cabinet"),
}


@dataclass(frozen=True)
class Look:
    shape: str  # disc, ellipse, rect, tall, veg_round, veg_long, blade, spoon, fixture
    size: tuple[int, int]  # w, h in pixels at 192x144 (scaled with the frame)
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]  # texture/second colour (inner colour for vegetables)
    texture: str  # plain, stripes, dots, checker, grain, rim


LOOKS: dict[str, Look] = {
    "plate": Look("disc", (40, 40), (235, 235, 240), (60, 90, 200), "rim"),
    "bowl": Look("ellipse", (44, 30), (200, 60, 50), (240, 200, 190), "rim"),
    "pan": Look("disc", (46, 46), (45, 45, 50), (110, 110, 120), "rim"),
    "cup": Look("rect", (20, 24), (60, 160, 220), (250, 250, 250), "stripes"),
    "glass": Look("tall", (16, 28), (190, 225, 235), (250, 250, 255), "plain"),
    "bottle": Look("tall", (14, 40), (40, 140, 60), (230, 200, 60), "stripes"),
    "spoon": Look("spoon", (10, 34), (190, 190, 200), (150, 110, 70), "plain"),
    "knife": Look("blade", (8, 40), (200, 205, 215), (40, 30, 30), "plain"),
    "board:chopping": Look("rect", (64, 40), (170, 120, 70), (140, 95, 50), "grain"),
    "sponge": Look("rect", (20, 14), (240, 220, 60), (40, 140, 60), "dots"),
    "towel": Look("rect", (30, 22), (230, 230, 230), (200, 40, 40), "checker"),
    "onion": Look("veg_round", (30, 30), (170, 110, 60), (245, 235, 220), "stripes"),
    "potato": Look("veg_round", (34, 24), (160, 125, 80), (245, 225, 150), "dots"),
    "carrot": Look("veg_long", (48, 16), (240, 120, 20), (250, 170, 60), "stripes"),
    "tomato": Look("veg_round", (28, 28), (220, 30, 30), (240, 110, 90), "plain"),
    "cupboard": Look("fixture", (60, 56), (120, 160, 110), (30, 25, 25), "plain"),
    "drawer": Look("fixture", (64, 26), (150, 110, 160), (35, 30, 30), "plain"),
    "fridge": Look("fixture", (50, 90), (235, 235, 235), (200, 230, 250), "plain"),
    "tap": Look("fixture", (30, 34), (170, 175, 185), (120, 180, 255), "plain"),
    "hob": Look("fixture", (70, 34), (30, 30, 30), (255, 90, 20), "plain"),
    "water": Look("liquid", (6, 30), (140, 190, 255), (140, 190, 255), "plain"),
    "oil": Look("liquid", (6, 30), (230, 200, 40), (230, 200, 40), "plain"),
}

# The vessel a liquid is poured from, and into.
POUR_FROM = {"water": "glass", "oil": "bottle"}
POUR_INTO = "pan"
# The tool a verb uses (shown in the video, object_b of its sub-action).
TOOLS = {"wash": "sponge", "cut": "knife", "peel": "knife", "mix": "spoon", "dry": "towel", "scrape": "spoon"}


def narration_noun(form: str) -> str:
    """EPIC writes nouns 'board:chopping' and narrates them 'chopping board'."""
    return " ".join(reversed(form.split(":")))


def _c(pred: str, *args: str, negated: bool = False) -> dict:
    return {"predicate": pred, "args": list(args), "negated": negated}


def _sub(verb: str, a: str, b: str | None = None, hand: str | None = "right", pre=(), post=(), purpose: str = "") -> dict:
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": hand,
            "pre": list(pre), "post": list(post), "purpose": purpose}


def true_program(verb: str, noun: str, narration: str, verb_class: int, noun_class: int) -> dict:
    """The action program the kitchen acts out for (verb, noun): what the video shows, step by step."""
    action = {"narration": narration, "verb": verb, "noun": noun, "verb_class": verb_class, "noun_class": noun_class}
    tool = TOOLS.get(verb)
    if verb == "take":
        pre, post = [_c("holding", "right", noun, negated=True)], [_c("holding", "right", noun)]
        steps = [_sub("take", noun, pre=pre, post=post, purpose=f"get the {noun}")]
    elif verb == "put":
        pre, post = [_c("holding", "right", noun)], [_c("holding", "right", noun, negated=True)]
        steps = [_sub("put", noun, pre=pre, post=post, purpose=f"set the {noun} down")]
    elif verb == "wash":
        pre, post = [_c("dirty", noun)], [_c("clean", noun), _c("wet", noun)]
        steps = [
            {"type": "conditional", "if": _c("switched_off", "tap"),
             "then": [_sub("turn-on", "tap", hand="left", pre=[_c("switched_off", "tap")], post=[_c("switched_on", "tap")],
                           purpose="get running water")], "else": []},
            _sub("take", tool, post=[_c("holding", "right", tool)], purpose="get the sponge"),
            {"type": "loop", "until": _c("clean", noun),
             "steps": [_sub("wash", noun, tool, hand="both", pre=[_c("dirty", noun)], post=[_c("wet", noun)],
                            purpose=f"scrub the {noun} under the water")]},
        ]
    elif verb in ("open", "close"):
        before, after = ("closed", "open") if verb == "open" else ("open", "closed")
        hand = "both" if noun == "bottle" else "right"
        pre, post = [_c(before, noun)], [_c(after, noun)]
        steps = [_sub(verb, noun, hand=hand, pre=pre, post=post, purpose=f"{verb} the {noun}")]
        if noun == "bottle":
            steps.insert(0, _sub("take", noun, hand="left", post=[_c("holding", "left", noun)], purpose="hold the bottle"))
    elif verb in ("turn-on", "turn-off"):
        before, after = ("switched_off", "switched_on") if verb == "turn-on" else ("switched_on", "switched_off")
        pre, post = [_c(before, noun)], [_c(after, noun)]
        steps = [_sub(verb, noun, pre=pre, post=post, purpose=f"{verb.replace('-', ' ')} the {noun}")]
    elif verb in ("cut", "peel"):
        state = "cut" if verb == "cut" else "peeled"
        pre = [_c("whole", noun)] + ([_c("on", noun, "board:chopping")] if verb == "cut" else [])
        post = [_c(state, noun)]
        steps = [
            _sub("take", tool, post=[_c("holding", "right", tool)], purpose="get the knife"),
            {"type": "loop", "until": _c(state, noun),
             "steps": [_sub(verb, noun, tool, pre=[_c("holding", "right", tool)], post=[],
                            purpose=f"{verb} a piece of the {noun}")]},
            _sub("put", tool, pre=[_c("holding", "right", tool)], post=[_c("holding", "right", tool, negated=True)],
                 purpose="put the knife away"),
        ]
        if verb == "peel":
            steps.insert(0, _sub("take", noun, hand="left", post=[_c("holding", "left", noun)], purpose=f"hold the {noun}"))
    elif verb == "pour":
        vessel = POUR_FROM[noun]
        pre, post = [_c("in", noun, vessel), _c("empty", POUR_INTO)], [_c("in", noun, POUR_INTO)]
        steps = [_sub("take", vessel, post=[_c("holding", "right", vessel)], purpose=f"get the {vessel}")]
        if vessel == "bottle":
            steps.append({"type": "conditional", "if": _c("closed", "bottle"),
                          "then": [_sub("open", "bottle", hand="both", pre=[_c("closed", "bottle")],
                                        post=[_c("open", "bottle")], purpose="open the bottle")], "else": []})
        steps += [_sub("pour", noun, POUR_INTO, pre=[_c("holding", "right", vessel)], post=[_c("in", noun, POUR_INTO)],
                       purpose=f"pour the {noun} into the pan"),
                  _sub("put", vessel, pre=[_c("holding", "right", vessel)], post=[_c("holding", "right", vessel, negated=True)],
                       purpose=f"put the {vessel} down")]
    elif verb == "mix":
        pre, post = [_c("full", noun)], [_c("mixed", noun)]
        steps = [_sub("take", tool, post=[_c("holding", "right", tool)], purpose="get a spoon"),
                 {"type": "loop", "until": _c("mixed", noun),
                  "steps": [_sub("mix", noun, tool, pre=[_c("in", tool, noun)], post=[], purpose="stir round")]}]
    elif verb == "dry":
        pre, post = [_c("wet", noun)], [_c("dry", noun)]
        steps = [_sub("take", tool, post=[_c("holding", "right", tool)], purpose="get the towel"),
                 {"type": "loop", "until": _c("dry", noun),
                  "steps": [_sub("dry", noun, tool, hand="both", pre=[_c("wet", noun)], post=[], purpose="wipe it")]},
                 _sub("put", tool, pre=[_c("holding", "right", tool)], post=[], purpose="put the towel back")]
    elif verb == "shake":
        pre, post = [_c("holding", "right", noun)], [_c("mixed", noun)]
        steps = [{"type": "routine", "name": "shake",
                  "steps": [_sub("shake", noun, pre=[_c("holding", "right", noun)], post=[], purpose="shake it up"),
                            _sub("shake", noun, pre=[], post=[_c("mixed", noun)], purpose="and again")]}]
    elif verb == "scrape":
        pre, post = [_c("dirty", noun), _c("empty", noun, negated=True)], [_c("empty", noun)]
        steps = [{"type": "loop", "until": _c("empty", noun),
                  "steps": [_sub("scrape", noun, tool, pre=[_c("holding", "right", tool)], post=[],
                                 purpose="scrape the leftovers off")]}]
    else:  # pragma: no cover - VERBS and this function are kept in step by a test
        raise KeyError(verb)
    return {"action": action, "pre": pre, "post": post, "steps": steps}


def visible_objects(verb: str, noun: str) -> list[str]:
    """Objects drawn in a segment of (verb, noun), the acted-on noun first."""
    objs = [noun]
    if verb == "pour":
        objs += [POUR_FROM[noun], POUR_INTO]
    if verb in ("cut",):
        objs.append("board:chopping")
    if verb == "wash":
        objs.append("tap")
    if verb in TOOLS:
        objs.append(TOOLS[verb])
    seen: list[str] = []
    for o in objs:
        if o not in seen:
            seen.append(o)
    return seen


# Plausible sequences: after a segment of (verb, noun), what usually comes next.
def follow_ups(verb: str, noun: str) -> list[tuple[str, str]]:
    """Actions that naturally follow (verb, noun) in a kitchen; the planner picks one of them often."""
    nxt: list[tuple[str, str]] = []
    if verb == "open" and noun in ("cupboard", "drawer", "fridge"):
        inside = {"cupboard": ("plate", "bowl", "glass", "cup"), "drawer": ("knife", "spoon", "towel"),
                  "fridge": ("carrot", "tomato", "onion", "potato", "bottle")}[noun]
        nxt += [("take", x) for x in inside]
    if verb == "take":
        if noun in VEG:
            nxt += [("wash", noun), ("cut", noun)] + ([("peel", noun)] if noun in VERBS["peel"].nouns else [])
        if noun in VERBS["wash"].nouns:
            nxt.append(("wash", noun))
        if noun == "bottle":
            nxt += [("open", "bottle"), ("shake", "bottle")]
        nxt.append(("put", noun))
    if verb == "wash":
        nxt += [("dry", noun)] if noun in VERBS["dry"].nouns else []
        nxt += [("turn-off", "tap"), ("put", noun)] if noun in PORTABLE else [("turn-off", "tap")]
    if verb == "turn-on" and noun == "tap":
        nxt += [("wash", x) for x in ("plate", "cup", "knife", "bowl")]
    if verb == "turn-on" and noun == "hob":
        nxt += [("pour", "oil"), ("mix", "pan"), ("shake", "pan")]
    if verb == "pour":
        nxt += [("mix", "pan"), ("close", "bottle") if noun == "oil" else ("put", "glass")]
    if verb == "mix":
        nxt += [("turn-off", "hob"), ("scrape", "pan")]
    if verb == "peel":
        nxt += [("cut", noun), ("wash", noun)] if noun in VERBS["wash"].nouns else [("cut", noun)]
    if verb == "cut":
        nxt += [("scrape", "board:chopping"), ("wash", "knife")]
    if verb == "dry":
        nxt.append(("put", noun))
    if verb == "take" and noun in ("pan", "bowl"):
        nxt.append(("mix", noun))
    if verb == "open" and noun == "bottle":
        nxt += [("pour", "oil"), ("close", "bottle")]
    if verb in ("close", "put", "turn-off", "scrape", "shake"):
        nxt += [("open", x) for x in ("cupboard", "drawer", "fridge")] + [("turn-on", "tap"), ("turn-on", "hob")]
    return [p for p in nxt if p[1] in VERBS[p[0]].nouns]
