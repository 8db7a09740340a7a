"""Mutation testing of programs/prompt.py, programs/reply.py and programs/estimate.py (session 63, mut63b): the
behaviours no earlier test pinned down, each found by a mutant that every test let through. Expected values are
hand computations or the documented behaviour (docs/programs.md), not leap's own output."""

from __future__ import annotations

import io
import json

import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.programs.estimate import FRAMING, CostEstimate, RepairTurns, measured_repairs
from leap_cli.programs.prompt import (ClipInfo, Exemplar, clip_info, clip_message, exemplar_narration,
                                      narration_record, select_exemplars, strip_paths)
from leap_cli.programs.reply import LEN, REFUSED, _read, parse_reply, verify_reply
from leap_cli.programs.validate import Labels
from tests.test_programs_validate import nouns, verbs  # noqa: F401 (fixtures)


# ---- prompt.py ----

def _hands(contacts):
    return {"status": "ok", "source": "test", "text": "",
            "data": {"hands": [{"hand": "left", "contacts": contacts}]}}


def test_contact_seconds_are_kept_to_the_millisecond():
    # 0.25 s to 0.5 s in contact: 0.25 s, not 0.2 (a rounding to tenths would lose the hand's share of the clip)
    record = {"narration_id": "c", "text": "A clip.", "components": {"hands": _hands(
        [{"object": "tap", "start": 0.25, "stop": 0.5}, {"object": "cup", "start": 1.0, "stop": 1.125}])}}
    assert clip_info(record).contacts == [("tap", "left", 0.25), ("cup", "left", 0.125)]


def test_a_comma_or_semicolon_after_a_path_stays_outside_it():
    assert strip_paths("saved to /data/x.mp4, then /tmp/y; done") == "saved to <path>, then <path>; done"


def test_relative_and_home_paths_are_stripped():
    # the docs: clip texts lose local file paths, so that no file layout goes to the API
    assert strip_paths("frames in ../frames/P01_01/ and ./a/b, see ~/leap/x.json") == \
        "frames in <path> and <path>, see <path>"


def test_a_segment_without_narration_or_text_has_no_description_not_narration_none():
    seg = Segment("P01_01_3", "P01", "P01_01", 1.0, 3.0, 61, 180, narration=None)
    info = clip_info(narration_record(seg), seg)
    assert info.text == ""
    msg = clip_message(info)
    assert msg.splitlines()[1] == "(no description available)" and "None" not in msg


def test_an_exemplar_whose_rendered_narration_is_empty_uses_its_narration_field():
    program = {"action": {"narration": "wash plate", "verb": "wash", "noun": "plate"}, "pre": [], "post": [],
               "steps": []}
    text = 'Clip 0.00-2.00 s (2.0 s long).\nNarration: "" (verb: wash, noun: plate).'
    n = exemplar_narration(Exemplar("mut63b-empty", "wash plate", text, program))
    assert n.text == "wash plate" and {"wash", "plate"} <= n.words


def test_class_0_is_a_class_in_the_clip_message(verbs, nouns):  # noqa: F811
    # the labels' classes are said as given, class 0 too (EPIC's "take" and "tap"), even where the words are
    # not in the class files
    msg = clip_message(ClipInfo("c", "t", verb="frobnicate", noun="widget", verb_class=0, noun_class=0), verbs, nouns)
    assert "Action: verb 'frobnicate' (verb_class 0), noun 'widget' (noun_class 0)." in msg


# ---- reply.py ----

def test_a_refusal_keeps_the_models_words():
    words = "I cannot describe this clip because it shows a person's face and a document with personal details " \
            "on it, which I am not able to process under the policy I follow."
    assert parse_reply(REFUSED + words)[1][0].message == "the model refused: " + words


@pytest.mark.parametrize("reply", ['{"a": "x\\udc00y"}', '{"a": ["x\\uDFFF"]}'])
def test_a_lone_low_surrogate_becomes_a_replacement_character(reply):
    value, findings = parse_reply(reply)
    assert findings == []
    text = value["a"] if isinstance(value["a"], str) else value["a"][0]
    text.encode("utf-8")  # the output file is UTF-8: a lone surrogate cannot be written there
    assert "\ufffd" in text


def test_a_lone_surrogate_in_a_key_becomes_a_replacement_character():
    value, findings = parse_reply('{"\\ud83d": 1, "b": 2}')
    assert findings == [] and value == {"\ufffd": 1, "b": 2}


def test_a_cut_frame_reads_as_the_end_of_input():
    whole = LEN.pack(3) + b"abc"
    assert _read(io.BytesIO(whole)) == b"abc"
    assert _read(io.BytesIO(LEN.pack(10) + b"abc")) is None  # the parent died mid-frame
    assert _read(io.BytesIO(b"\x01\x00")) is None


def test_an_empty_object_is_checked_not_valid(verbs, nouns):  # noqa: F811
    program, findings = verify_reply("{}", verbs, nouns, Labels(None, None), 8)
    assert program == {} and findings, "an empty object has no action: the schema must refuse it"


# ---- estimate.py ----

def test_repair_prompts_without_counts_add_up_round_r_times_and_the_last_rounds_findings_are_not_sent():
    # (id, round, prompt tokens, completion tokens, characters of findings); --repair-rounds 2, frame 20.
    rows = [("a", 0, 0, 100, 400), ("a", 1, 0, 150, 800), ("a", 2, 0, 150, 1200), ("b", 0, 0, 100, None)]
    r = measured_repairs(rows, 2, 20, "x")
    # findings sent: those of rounds 0 and 1 (400 / 4, 800 / 4: mean 150) + the frame 20 = 170; the last round's
    # findings are sent nowhere. Turn 1 re-sends 1 reply and its findings, turn 2 re-sends 2.
    per_round = 100 + 170 + FRAMING
    assert r.rate == pytest.approx(1.0) and r.reply_tokens == pytest.approx(150)
    assert r.extra_prompt == pytest.approx((1 * per_round + 2 * per_round) / 2)


def test_a_first_prompt_without_a_count_uses_the_replies_and_findings():
    # b's first prompt was counted, a's was not (another endpoint, the same model): no difference of counts
    rows = [("a", 0, 0, 100, 400), ("b", 0, 1000, 100, None), ("a", 1, 1500, 150, None)]
    r = measured_repairs(rows, 1, 20, "x")
    assert r.extra_prompt == pytest.approx(100 + (20 + 400 / 4) + FRAMING)


def test_a_repair_prompt_is_never_shorter_than_the_first():
    # the failing segment's prompt is shorter than the mean first prompt: a repair turn adds to its prompt,
    # it cannot take from it
    rows = [("a", 0, 3000, 100, None), ("b", 0, 1000, 100, 400), ("b", 1, 1500, 150, None)]
    assert measured_repairs(rows, 1, 20, "x").extra_prompt == 0.0


def _estimate(repairs):
    # prices per token: 1 for a prompt token, 0.5 for a cached one, 2 for a completion token
    price = lambda u: (u["prompt_tokens"] - u["cached_tokens"]) + 0.5 * u["cached_tokens"] \
        + 2 * u["completion_tokens"]  # noqa: E731
    return CostEstimate("val", 10, 0, 2000.0, 1024, 100.0, "the exemplar programs' mean", 1000, price,
                        "test prices", repairs=repairs)


def test_repair_turns_read_their_prefix_from_the_providers_cache():
    est = _estimate(RepairTurns(1, 0.5, "its records", 300.0, 150.0))
    assert est.repair_requests == pytest.approx(5)  # 10 requests at 0.5 repair turns each
    assert est.repair_cost() == pytest.approx(5 * (2300 + 2 * 150))
    assert est.repair_cost(cached_prefix=True) == pytest.approx(5 * ((2300 - 1024) + 0.5 * 1024 + 2 * 150))


def test_a_measured_rate_of_zero_counts_no_repair_turn():
    est = _estimate(RepairTurns(1, 0.0, "0 repair turns to the 10 first replies", 0.0, 100.0))
    assert est.repair_requests == 0 and est.repair_cost() == 0
    assert "~0 more requests" in " ".join(est.lines())


def test_two_exemplar_files_of_one_id_are_refused_naming_both(tmp_path):
    # Before: both loaded, and PromptBuilder (which serialises each exemplar's turns once, by id) showed the
    # first file's clip and program in place of the second's: a prompt silently without one of its exemplars.
    from leap_cli.errors import LeapError
    from leap_cli.programs.prompt import load_exemplars

    good = load_exemplars()[:2]
    for name, e in (("one.json", good[0]), ("two.json", good[1])):
        (tmp_path / name).write_text(json.dumps({"id": "same", "narration": e.narration, "text": e.text,
                                                 "program": e.program}))
    with pytest.raises(LeapError, match="one.json") as err:
        load_exemplars(tmp_path)
    assert err.value.path.endswith("two.json") and "same" in str(err.value)


@pytest.mark.parametrize("eid", ["", "  "])
def test_an_exemplar_without_an_id_is_refused(tmp_path, eid):
    # the prompt names each exemplar's clip by its id ("Clip wash-plate:"): a blank one read "Clip :"
    from leap_cli.errors import LeapError
    from leap_cli.programs.prompt import load_exemplars

    e = load_exemplars()[0]
    (tmp_path / "blank.json").write_text(json.dumps({"id": eid, "narration": e.narration, "text": e.text,
                                                     "program": e.program}))
    with pytest.raises(LeapError, match="id is empty") as err:
        load_exemplars(tmp_path)
    assert err.value.path.endswith("blank.json")


def test_the_depth_limit_is_the_documented_64():
    # docs/programs.md: a reply that nests JSON "more than 64 levels deep" gets the repair turn's finding
    at_64 = '{"a": ' + "[" * 63 + "]" * 63 + "}"
    assert parse_reply(at_64)[1] == []
    value, findings = parse_reply('{"a": ' + "[" * 64 + "]" * 64 + "}")
    assert value is None and "65 levels deep" in findings[0].message


def test_the_clip_text_of_a_record_loses_its_paths():
    # docs/programs.md, "Prompt order and caching": clip texts lose local file paths before the prompt
    record = {"narration_id": "c", "components": {},
              "text": "Narration: cut onion.\nCamera: error (cannot open /home/ann/epic/P01_01.MP4)."}
    info = clip_info(record)
    assert info.text == "Narration: cut onion.\nCamera: error (cannot open <path>)." and "/home" not in info.text


def test_a_clips_verb_key_matches_in_any_case(verbs, nouns):  # noqa: F811
    # without class ids the verb is compared by its key, lower case: "Wash" is the exemplar's "wash" (+4)
    program = lambda verb, noun: {"action": {"narration": f"{verb} {noun}", "verb": verb, "noun": noun},  # noqa: E731
                                  "pre": [], "post": [], "steps": []}
    a = Exemplar("a", "rinse cup", "rinse cup", program("rinse", "cup"))
    b = Exemplar("b", "wash plate", "wash plate", program("wash", "plate"))
    clip = ClipInfo("c", "", "Wash cup", "Wash", None)  # one word shared with each: 1/3 both
    assert [e.id for e in select_exemplars(clip, [a, b], 1)] == ["b"]
