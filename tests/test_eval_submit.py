"""Scores files, `leap evaluate --scores` and `leap submit`: round trips and every refusal."""

import json
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leap_cli import submit as sub
from leap_cli.cli import app
from leap_cli.epic.annotations import Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import load_scores, save_scores
from leap_cli.evaluate.scoring import evaluate_scores

HEAD = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
VAL = [  # id, participant, verb, verb_class, noun, noun_class
    ("P01_01_0", "P01", "take", 0, "plate", 3),
    ("P01_01_1", "P01", "wash", 2, "plate", 3),
    ("P02_01_0", "P02", "cut", 5, "knife", 7),
    ("P02_01_1", "P02", "take", 0, "tap", 0),
]
TEST_IDS = ["P03_01_0", "P03_01_1", "P03_01_2"]
NV, NN = 6, 8  # class files hold ids {0,2,5} and {0,3,7}: counts are max id + 1


@pytest.fixture()
def ann_dir(tmp_path):
    d = tmp_path / "kitchen" / "annotations"
    d.mkdir(parents=True)
    (d / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n0,take,\"['take']\",retrieve\n2,wash,\"['wash']\",clean\n5,cut,\"['cut']\",cut\n")
    (d / "EPIC_100_noun_classes.csv").write_text(
        "id,key,instances,category\n0,tap,\"['tap']\",appliances\n3,plate,\"['plate']\",crockery\n"
        "7,knife,\"['knife']\",cutlery\n")
    rows = [HEAD + ",narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"]
    for i, (nid, p, v, vc, n, nc) in enumerate(VAL):
        rows.append(f"{nid},{p},{nid.rsplit('_', 1)[0]},00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},"
                    f"{i * 60 + 30},{v} {n},{v},{vc},{n},{nc},['{n}'],[{nc}]")
    (d / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    (d / "EPIC_100_test_timestamps.csv").write_text(
        HEAD + "\n" + "".join(f"{t},P03,P03_01,00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},{i * 60 + 30}\n"
                              for i, t in enumerate(TEST_IDS)))
    (d / "EPIC_100_tail_verbs.csv").write_text("verb\n5\n")
    (d / "EPIC_100_tail_nouns.csv").write_text("noun\n0\n")
    (d / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP02\n")
    return d


def _val_scores():
    verb = torch.full((4, NV), -1.0)
    noun = torch.full((4, NN), -1.0)
    # right: s0 verb+noun, s1 verb only, s2 noun only, s3 nothing (predicts verb 2, noun 7)
    for i, (v, n) in enumerate([(0, 3), (2, 0), (0, 7), (2, 7)]):
        verb[i, v], noun[i, n] = 3.0, 3.0
    return [r[0] for r in VAL], verb, noun


def test_scores_round_trip_and_official_formats(tmp_path, ann_dir):
    ids, verb, noun = _val_scores()
    save_scores(tmp_path / "scores.pt", ids, verb, noun, meta={"split": "val", "task": "recognition"})
    a = load_scores(tmp_path / "scores.pt")
    assert a["narration_id"] == ids and torch.equal(a["verb_output"], verb) and a["meta"]["task"] == "recognition"
    # official dict layout as a pickle of NumPy arrays (made from scores.pt as docs/evaluate-submit.md shows, for
    # EPIC's own evaluate.py), and the list-of-dicts layout as .pt
    s = torch.load(tmp_path / "scores.pt", weights_only=True)
    with open(tmp_path / "official.pkl", "wb") as f:
        pickle.dump({"narration_id": np.array(s["narration_id"]), "verb_output": s["verb_output"].numpy(),
                     "noun_output": s["noun_output"].numpy()}, f)
    torch.save([{"verb_output": verb[i].numpy(), "noun_output": noun[i].numpy(), "narration_id": ids[i]}
                for i in range(4)], tmp_path / "official.pt")
    ann = Annotations(ann_dir)
    results = [evaluate_scores(load_scores(tmp_path / n), ann, "val") for n in ("scores.pt", "official.pkl", "official.pt")]
    assert results[0]["recognition"] == results[1]["recognition"] == results[2]["recognition"]
    r = results[0]["recognition"]
    assert r["all"]["verb"]["top1"] == 0.5 and r["all"]["noun"]["top1"] == 0.5 and r["all"]["action"]["top1"] == 0.25
    assert r["tail"]["verb"]["top1"] == 0.0  # s2 (cut) predicted take
    assert r["tail"]["noun"]["top1"] == 0.0  # s3 (tap) predicted knife
    assert r["unseen"]["noun"]["top1"] == 0.5  # P02: s2 right, s3 wrong


def test_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"verb_output": Evil()}, f)
    with pytest.raises(LeapError, match="not allowed"):
        load_scores(tmp_path / "evil.pkl")


def test_unreadable_scores_files_are_one_short_line(tmp_path):
    ids, verb, noun = _val_scores()
    save_scores(tmp_path / "good.pt", ids, verb, noun)
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "text.pt").write_text("verb_output: 1 2 3\n")
    (tmp_path / "cut.pt").write_bytes(good[:len(good) // 2])
    for name, says in (("empty.pt", "the file is empty"), ("empty.pkl", "the file is empty"),
                       ("text.pt", "not a file written by torch.save"), ("cut.pt", "damaged or truncated")):
        with pytest.raises(LeapError) as e:
            load_scores(tmp_path / name)
        line = e.value.one_line()
        assert says in line and e.value.path == str(tmp_path / name), line
        assert "PyTorch 2.6" not in line and len(line) < 400, line


_TWO = {"verb": {"0": 1, "1": 2}, "noun": {"0": 1}}


@pytest.mark.parametrize("doc, segment, says", [
    ({"results": {"a": _TWO, "b": {"verb": {"0": 1}, "noun": {"0": 1}}}}, "b", "1 verb classes here but 2 in a"),
    ({"results": {"a": _TWO, "b": [1, 2]}}, "b", "the result is a list"),
    ({"results": {"a": {**_TWO, "action": {"1": 0.5}}}}, "a", "action keys must be \"verb,noun\""),
    ({"results": {"a": {**_TWO, "action": {"1,0": 0.5}}, "b": {**_TWO, "action": {"1,0": 0.5, "0,0": 0.1}}}},
     "a", "1 action scores, where EPIC's anticipation evaluator takes exactly 2"),  # (2 verbs x 1 noun)
    ({"results": {"a": {**_TWO, "action": {"1,0": 0.5, "0,0": 0.1}}, "b": {**_TWO, "action": [0.5]}}}, "b",
     "not a {"),
    ({"results": {"a": _TWO, "b": {"verb": {"0": 1, "00": 5}, "noun": {"0": 1}}}}, "b",
     "verb class id 0 is given more than once")])
def test_a_challenge_json_of_another_layout_is_one_line_naming_the_segment(tmp_path, doc, segment, says):
    """Segments with different class counts or action counts, a result or action scores that are not an object,
    an action key without its noun, a class id written twice ("0" and "00" were one class, the later score kept):
    `leap evaluate --scores` / `leap submit --scores` ended in a traceback or read it silently."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LeapError) as e:
        load_scores(path)
    assert e.value.path == str(path) and e.value.record == segment and says in e.value.message, e.value.one_line()


@pytest.mark.parametrize("entries, record, says", [
    ([{"narration_id": "a", "verb_output": [1, 2], "noun_output": [1]}, {"narration_id": "b", "verb_output": [1, 2]}],
     "entry 1 (b)", "segment entries lack noun_output"),
    ([{"narration_id": "a", "verb_output": [1, 2], "noun_output": [1]},
      {"narration_id": "b", "verb_output": [1, 2, 3], "noun_output": [1]}],
     "entry 1 (b)", "verb_output of shape (3,) here but (2,) in entry 0"),
    ([{"narration_id": "a", "verb_output": [1, 2], "noun_output": [1]}, {"verb_output": [1, 2], "noun_output": [1]}],
     "entry 1", "segment entries lack narration_id")])
def test_a_list_of_results_names_the_entry_that_differs(tmp_path, entries, record, says):
    import pickle

    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps(entries))
    with pytest.raises(LeapError) as e:
        load_scores(path)
    assert e.value.path == str(path) and e.value.record == record and says in e.value.message, e.value.one_line()


def test_scores_refusals(tmp_path, ann_dir):
    ids, verb, noun = _val_scores()
    with pytest.raises(LeapError, match="duplicated"):
        save_scores(tmp_path / "d.pt", [ids[0]] * 4, verb, noun)
    with pytest.raises(LeapError, match="4 narration ids but 3"):
        save_scores(tmp_path / "d.pt", ids, verb[:3], noun)
    with pytest.raises(LeapError, match="4 verb rows and 3 noun rows"):
        save_scores(tmp_path / "d.pt", ids, verb, noun[:3])
    with pytest.raises(LeapError, match=r"noun_output has shape \(4,\), expected \[N, classes\]"):
        save_scores(tmp_path / "d.pt", ids, verb, noun[:, 0])
    save_scores(tmp_path / "x.pt", ["P09_01_0"], verb[:1], noun[:1])
    with pytest.raises(LeapError, match="not in the val annotations.*P09_01_0"):
        evaluate_scores(load_scores(tmp_path / "x.pt"), Annotations(ann_dir), "val")
    save_scores(tmp_path / "s.pt", ids, verb[:, :3], noun)
    with pytest.raises(LeapError, match="verb_output has 3 classes, the class file needs 6"):
        evaluate_scores(load_scores(tmp_path / "s.pt"), Annotations(ann_dir), "val")
    noun = noun.clone()
    noun[[1, 3], 2] = float("nan")  # which segments, as submit says (it said only "holds NaN or infinity")
    save_scores(tmp_path / "n.pt", ids, verb, noun)
    with pytest.raises(LeapError, match=rf"noun_output holds NaN or infinity for 2 segments: {ids[1]}, {ids[3]} \("):
        evaluate_scores(load_scores(tmp_path / "n.pt"), Annotations(ann_dir), "val")


def test_scores_of_another_file_never_get_metrics_in_the_runs_eval_folder(tmp_path, ann_dir):
    """Was wrong: ``--scores OTHER.pt --run R`` wrote runs/R/eval/val/metrics.json for OTHER's scores, beside the
    run's own scores.pt that they do not describe (docs: a folder never holds metrics of other scores). The run's
    own scores.pt, rescored with --run, still gets them there."""
    ids, verb, noun = _val_scores()
    own = tmp_path / "runs" / "R" / "eval" / "val"
    own.mkdir(parents=True)
    save_scores(own / "scores.pt", ids, verb, noun)
    save_scores(tmp_path / "other.pt", ids[:3], verb[:3], noun[:3])

    def evaluate(scores):
        res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--scores", str(scores), "--run", "R",
                                       "--workdir", str(tmp_path)])
        assert res.exit_code == 0, res.output

    evaluate(tmp_path / "other.pt")
    assert not (own / "metrics.json").exists()
    assert json.loads((tmp_path / "other.metrics.json").read_text())["segments"] == 3
    evaluate(own / "scores.pt")
    assert json.loads((own / "metrics.json").read_text())["segments"] == len(ids)


def test_evaluate_cli_scores(tmp_path, ann_dir):
    ids, verb, noun = _val_scores()
    save_scores(tmp_path / "scores.pt", ids[:3], verb[:3], noun[:3])
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--scores", str(tmp_path / "scores.pt"),
                                   "--workdir", str(tmp_path), "--task", "anticipation"])
    assert res.exit_code == 0, res.output
    # a file saying no task holds recognition scores: scored as anticipation, its metrics get a name of their own
    # (both tasks wrote scores.metrics.json, one replacing the other)
    m = json.loads((tmp_path / "scores.anticipation.metrics.json").read_text())
    assert m["segments"] == 3 and m["not_scored"] == 1 and m["task"] == "anticipation"
    assert CliRunner().invoke(app, ["evaluate", "--split", "val", "--scores", str(tmp_path / "scores.pt"),
                                    "--workdir", str(tmp_path)]).exit_code == 0
    assert json.loads((tmp_path / "scores.metrics.json").read_text())["task"] == "recognition"
    assert json.loads((tmp_path / "scores.anticipation.metrics.json").read_text())["task"] == "anticipation"
    # verb classes 0 (s0 hit), 2 (s1 hit), 5 (s2 miss in top-1 but 6 classes: top-5 holds all but one)
    assert m["anticipation"]["overall"]["verb"]["mt5r"] == 1.0
    assert "anticipation" in res.output and "overall" in res.output
    # a partial anticipation scoring printed figures that looked complete (the official evaluator refuses them)
    assert "note: 1 segment of val has no scores" in " ".join(res.output.split())


def _test_scores(n_verbs=NV, n_nouns=NN, ids=TEST_IDS):
    g = torch.Generator().manual_seed(0)
    return {"narration_id": list(ids), "verb_output": torch.randn(len(ids), n_verbs, generator=g),
            "noun_output": torch.randn(len(ids), n_nouns, generator=g)}


def test_submission_round_trip(tmp_path, ann_dir):
    ann = Annotations(ann_dir)
    assert sub.class_counts(ann) == (NV, NN)
    scores = _test_scores()
    summary = sub.submit(scores, ann, "recognition", tmp_path / "s.zip", sls_pt=2, sls_tl=3, sls_td=4)
    assert summary["segments"] == 3 and summary["challenge"] == "action_recognition"
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert z.namelist() == ["test.json"]
        doc = json.loads(z.read("test.json"))
    assert doc["version"] == "0.2" and (doc["sls_pt"], doc["sls_tl"], doc["sls_td"]) == (2, 3, 4)
    entry = doc["results"]["P03_01_1"]
    assert list(entry["verb"]) == [str(i) for i in range(NV)] and list(entry["noun"]) == [str(i) for i in range(NN)]
    # raw logits, no softmax (the server combines verb and noun itself: a softmax here would move its action figures)
    assert list(entry["verb"].values()) == scores["verb_output"][1].double().tolist()
    assert list(entry["noun"].values()) == scores["noun_output"][1].double().tolist()
    assert sub.check_file(tmp_path / "s.zip", ann)["verbs"] == NV


def test_float64_scores_are_written_to_the_last_digit():
    """float32 would round distinct float64 scores into ties."""
    scores = _test_scores()
    scores["noun_output"] = scores["noun_output"].double() + 0.1  # not float32 values
    doc = sub.make_submission(scores, "recognition", sls_pt=1, sls_tl=1, sls_td=1)
    assert doc["results"][TEST_IDS[0]]["noun"]["3"] == float(scores["noun_output"][0, 3])


def test_action_scores_in_a_recognition_submission_are_refused_before_a_file_is_written(tmp_path, ann_dir):
    with pytest.raises(LeapError, match="anticipation submissions only"):
        sub.submit(_test_scores(), Annotations(ann_dir), "recognition", tmp_path / "s.zip", sls_pt=1, sls_tl=1,
                   sls_td=1, with_actions=True)
    assert not (tmp_path / "s.zip").exists()


def test_check_refuses_a_zip_with_another_file_and_class_keys_off_by_one(tmp_path):
    """The official validator takes a zip of test.json alone, and class keys "0".."C-1" (MissingScoreException)."""
    doc = sub.make_submission(_test_scores(), "recognition", sls_pt=1, sls_tl=1, sls_td=1)
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as z:
        z.writestr("test.json", json.dumps(doc))
        z.writestr("notes.txt", "x")
    with pytest.raises(LeapError, match="must hold only test.json"):
        sub.read_submission(tmp_path / "s.zip")
    shifted = json.loads(json.dumps(doc))
    entry = shifted["results"][TEST_IDS[0]]
    entry["verb"] = {str(int(k) + 1): v for k, v in entry["verb"].items()}  # "1".."C" instead of "0".."C-1"
    with pytest.raises(LeapError, match="verb scores not keyed"):
        sub.check_submission(shifted, TEST_IDS, NV, NN)


@pytest.mark.parametrize("with_actions", [False, True])
def test_streamed_submission_is_json_dumps_of_the_whole_dict(tmp_path, with_actions):
    """write_submission writes a few segments at a time (a test split as one dict is ~0.7 GB): the bytes are
    json.dumps of the whole challenge dict, as the official create_submission.py writes it."""
    ids = [f"P01_101_{i}" for i in range(600)]  # more than one batch of 256
    scores = _test_scores(97, 300, ids)
    kw = dict(sls_pt=1, sls_tl=2, sls_td=3, with_actions=with_actions)
    whole = sub.make_submission(scores, "anticipation", **kw)
    sub.write_submission(tmp_path / "s.zip", sub.make_submission(scores, "anticipation", lazy=True, **kw))
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert z.read("test.json") == json.dumps(whole).encode()
        assert z.getinfo("test.json").compress_type == zipfile.ZIP_DEFLATED
        assert z.getinfo("test.json").external_attr >> 16 == 0o100644  # (unzip made it 0600, no file type: QA)
    assert sub.check_submission(sub.read_submission(tmp_path / "s.zip"), ids, 97, 300)["actions"] is with_actions


def test_action_scores_in_a_recognition_submission_are_counted_on_every_segment():
    """It named the first segment and said "1 segment" where every one had action scores."""
    doc = sub.make_submission(_test_scores(), "anticipation", sls_pt=2, sls_tl=3, sls_td=4, with_actions=True)
    doc["challenge"] = "action_recognition"
    n = len(doc["results"])
    with pytest.raises(LeapError, match=rf"{n} segments with action scores in a recognition submission"):
        sub.check_submission(doc, TEST_IDS, NV, NN)


def test_the_same_scores_give_the_same_zip_bytes(tmp_path, monkeypatch):
    """test.json's date in the zip was the time of writing: a rerun made another file from the same scores."""
    import time

    doc = sub.make_submission(_test_scores(), "recognition", sls_pt=2, sls_tl=3, sls_td=4)
    sub.write_submission(tmp_path / "a.zip", doc)
    later = time.localtime(time.time() + 86400 * 40)
    monkeypatch.setattr(time, "localtime", lambda *a: later)
    sub.write_submission(tmp_path / "b.zip", doc)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


@pytest.mark.parametrize("value", [True, "0.5", None, [0.5], 10 ** 400, float("inf")])
def test_check_refuses_scores_that_are_not_finite_numbers(value):
    doc = sub.make_submission(_test_scores(), "recognition", sls_pt=2, sls_tl=3, sls_td=4)
    doc["results"]["P03_01_1"]["noun"]["2"] = value
    with pytest.raises(LeapError, match="noun scores that are NaN, infinite or not numbers: P03_01_1"):
        sub.check_submission(doc, TEST_IDS, NV, NN)
    doc["results"]["P03_01_1"]["noun"]["2"] = 3  # an integer is a number
    doc["results"]["P03_01_0"]["verb"]["99"] = 0.1  # a key beyond the classes
    with pytest.raises(LeapError, match=r"1 segment with verb scores not keyed.*P03_01_0 \(7 keys\) \(rewrite"):
        sub.check_submission(doc, TEST_IDS, NV, NN)


def test_anticipation_submission_with_actions(tmp_path, ann_dir):
    ann = Annotations(ann_dir)
    # 6 x 8 = 48 pairs < 100: the official file needs exactly 100 action scores
    with pytest.raises(LeapError, match="exactly 100"):
        sub.submit(_test_scores(), ann, "anticipation", tmp_path / "a.zip", sls_pt=0, sls_tl=0, sls_td=0,
                   with_actions=True)
    sub.submit(_test_scores(), ann, "anticipation", tmp_path / "a.zip", sls_pt=0, sls_tl=0, sls_td=0)
    doc = sub.read_submission(tmp_path / "a.zip")
    assert doc["challenge"] == "action_anticipation" and "action" not in doc["results"]["P03_01_0"]


@pytest.mark.parametrize("first_has", [True, False])
def test_actions_on_some_segments_name_the_fewer(first_has):
    """Actions on 4 of 5 segments: the one without is named, whichever the first entry is (the first entry's side
    decided, so a file whose first entry lacked them named the 4 that have them); and 1 of 5: the one with them."""
    ids = ["a", "b", "c", "d", "e"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    odd = "a" if not first_has else "c"
    del doc["results"][odd]["action"]
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, ids, 97, 300)
    assert e.value.message == ("1 segment with action scores on some segments but not all (4 segments of 5 have "
                               f"them; this one lacks them): {odd}"), e.value.message
    for nid in ids:
        if nid != odd:
            doc["results"][nid].pop("action")
    doc["results"][odd]["action"] = dict(list(sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1,
                                         sls_tl=1, sls_td=1, with_actions=True)["results"]["b"]["action"].items()))
    with pytest.raises(LeapError, match=rf"\(1 segment of 5 has them: this one\): {odd} \(rewrite"):
        sub.check_submission(doc, ids, 97, 300)


def test_anticipation_actions_on_epic_sizes():
    ids = ["a", "b"]
    s = _test_scores(97, 300, ids)
    doc = sub.make_submission(s, "anticipation", sls_pt=1, sls_tl=1, sls_td=1, with_actions=True)
    acts = doc["results"]["a"]["action"]
    assert len(acts) == 100
    best = f"{int(s['verb_output'][0].argmax())},{int(s['noun_output'][0].argmax())}"
    assert max(acts, key=acts.get) == best
    assert sub.check_submission(doc, ids, 97, 300)["actions"] is True
    del doc["results"]["b"]["action"]
    with pytest.raises(LeapError, match="some segments but not all.*b"):
        sub.check_submission(doc, ids, 97, 300)


@pytest.mark.parametrize("key", ["0,300", "97,0", "-1,5", "+1,5", "01,5", " 1,5", "1, 5", "\u0661,5"])
def test_check_refuses_action_keys_outside_the_class_ids(key):
    """EPIC has 97 verbs (ids 0-96) and 300 nouns (0-299): an action keyed past them is no action the server
    scores, and must not pass --check. Was wrong for the keys after "-1,5": int() took a sign, a space, a
    leading zero or other digits, so one action could have two keys ("1,5" and "01,5")."""
    ids = ["a", "b"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    acts = doc["results"]["b"]["action"]
    acts[key] = acts.pop(next(iter(acts)))  # still 100 scores
    with pytest.raises(LeapError, match=f"action keys that are not valid \"verb,noun\" ids: b: {re.escape(key)}"):
        sub.check_submission(doc, ids, 97, 300)


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"1 narration id of EPIC_100_test_timestamps.csv has no scores: P03_01_2"),
    ("extra", r"not in EPIC_100_test_timestamps.csv: P01_01_0"),
    ("nan", r"verb_output holds NaN or infinity for 1 segment: P03_01_1"),
    ("inf", r"noun_output holds NaN or infinity for 1 segment: P03_01_0"),
    ("val", r"none of the 4 narration ids is in EPIC_100_test_timestamps.csv \(e.g. P01_01_0, P01_01_1, P02_01_0 "
            r"\.\.\. \(\+1 more\)\): these are not test-split scores"),
    ("verbs", r"verb_output has 97 classes, the class file needs 6"),
    ("nouns", r"noun_output has 7 classes, the class file needs 8"),
])
def test_submit_refusals(tmp_path, ann_dir, case, pattern):
    s = _test_scores()
    if case == "missing":
        s = _test_scores(ids=TEST_IDS[:2])
    elif case == "extra":
        s = _test_scores(ids=TEST_IDS + ["P01_01_0"])
    elif case == "val":
        s = _test_scores(ids=[r[0] for r in VAL])
    elif case == "nan":
        s["verb_output"][1, 2] = float("nan")
    elif case == "inf":
        s["noun_output"][0, 0] = float("inf")
    elif case == "verbs":
        s = _test_scores(n_verbs=97)
    elif case == "nouns":
        s = _test_scores(n_nouns=7)
    with pytest.raises(LeapError, match=pattern):
        sub.submit(s, Annotations(ann_dir), "recognition", tmp_path / "s.zip", sls_pt=2, sls_tl=3, sls_td=4)
    assert not (tmp_path / "s.zip").exists()


def _write_zip(path, doc, name="test.json"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, doc if isinstance(doc, str) else json.dumps(doc))


def test_check_refusals(tmp_path, ann_dir):
    ann = Annotations(ann_dir)
    good = sub.make_submission(_test_scores(), "recognition", sls_pt=2, sls_tl=3, sls_td=4)

    def refused(doc, pattern, name="test.json"):
        _write_zip(tmp_path / "c.zip", doc, name)
        with pytest.raises(LeapError, match=pattern):
            sub.check_file(tmp_path / "c.zip", ann)

    refused(good, "must hold only test.json", name="sub/test.json")
    refused(dict(good, version="0.1"), "version '0.1' is not supported")
    refused(dict(good, challenge="action_detection"), "challenge 'action_detection'")
    refused(dict(good, sls_td=6), "sls_td is 6")
    refused(dict(good, sls_pt=True), "sls_pt is True; supervision levels are integers")  # JSON true is no level
    doc = json.loads(json.dumps(good))
    del doc["results"]["P03_01_0"]
    refused(doc, "1 narration id of EPIC_100_test_timestamps.csv has no scores: P03_01_0")
    doc = json.loads(json.dumps(good))
    doc["results"]["P03_01_2"]["verb"]["3"] = float("nan")
    refused(json.dumps(doc), "verb scores that are NaN.*P03_01_2")  # json.dumps writes NaN as the server would read it
    doc = json.loads(json.dumps(good))
    del doc["results"]["P03_01_1"]["noun"]["7"]
    refused(doc, "noun scores not keyed \"0\"..\"7\" \\(8 classes\\).*P03_01_1 \\(7 keys\\)")
    doc = json.loads(json.dumps(good))
    doc["results"]["P03_01_1"]["action"] = {"0,0": 1.0}
    refused(doc, "action")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(LeapError, match="not a zip"):
        sub.check_file(tmp_path / "bad.zip", ann)


def test_submit_cli(tmp_path, ann_dir):
    s = _test_scores()
    save_scores(tmp_path / "test.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    runner = CliRunner()
    res = runner.invoke(app, ["submit", "--scores", str(tmp_path / "test.pt"), "--workdir", str(tmp_path),
                              "--out", str(tmp_path / "submission.zip"), "--sls-pt", "1", "--sls-tl", "3",
                              "--sls-td", "3"])
    assert res.exit_code == 0, res.output
    assert sub.read_submission(tmp_path / "submission.zip")["sls_pt"] == 1
    res = runner.invoke(app, ["submit", "--check", str(tmp_path / "submission.zip"), "--annotations", str(ann_dir)])
    assert res.exit_code == 0 and "valid submission" in res.output
    res = runner.invoke(app, ["submit", "--check", str(tmp_path / "submission.zip"), "--annotations", str(ann_dir),
                              "--scores", str(tmp_path / "test.pt")])  # --scores was ignored without a word
    assert isinstance(res.exception, LeapError) and "--scores would be ignored" in str(res.exception)
    # --check reads JSON: torch is not imported (4 s and 0.85 GB of the 18 s and 1.4 GB it took on EPIC's test split)
    code = ("import sys; from leap_cli.cli import main; sys.argv = ['leap', 'submit', '--check', sys.argv[1], "
            "'--annotations', sys.argv[2]]\ntry:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "submission.zip"), str(ann_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "valid submission" in r.stdout, r.stdout + r.stderr
    # a level outside 0-5: the one line --check gives for a zip's (it was typer's usage box), before the scores load
    res = runner.invoke(app, ["submit", "--scores", str(tmp_path / "test.pt"), "--sls-pt", "1", "--sls-tl", "3",
                              "--sls-td", "6", "--workdir", str(tmp_path), "--out", str(tmp_path / "bad.zip")])
    assert isinstance(res.exception, LeapError) and not (tmp_path / "bad.zip").exists(), res.output
    assert res.exception.one_line().startswith("--sls-td is 6; supervision levels are integers from 0 to 5")


def test_submit_takes_the_task_the_scores_were_made_for(tmp_path, ann_dir):
    """Anticipation scores went into a recognition submission unless --task said otherwise: the default is now
    the scores file's task, and a --task that contradicts it is refused."""
    s = _test_scores()
    save_scores(tmp_path / "ant.pt", s["narration_id"], s["verb_output"], s["noun_output"],
                meta={"task": "anticipation", "split": "test"})
    base = ["submit", "--scores", str(tmp_path / "ant.pt"), "--annotations", str(ann_dir),
            "--out", str(tmp_path / "s.zip"), "--sls-pt", "0", "--sls-tl", "3", "--sls-td", "3"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    assert sub.read_submission(tmp_path / "s.zip")["challenge"] == "action_anticipation"
    res = CliRunner().invoke(app, base + ["--task", "recognition"])
    assert isinstance(res.exception, LeapError) and "these are anticipation scores" in str(res.exception)
    assert "--task anticipation" in res.exception.fix
    official = {k: s[k] for k in ("narration_id", "verb_output", "noun_output")}  # no meta: --task decides
    assert sub.submit(official, Annotations(ann_dir), "anticipation", tmp_path / "o.zip", sls_pt=2, sls_tl=3,
                      sls_td=4)["challenge"] == "action_anticipation"


def test_challenge_json_and_zip_as_scores(tmp_path, ann_dir):
    ids, verb, noun = _val_scores()
    doc = sub.make_submission({"narration_id": ids, "verb_output": verb, "noun_output": noun}, "anticipation",
                              sls_pt=0, sls_tl=0, sls_td=0)
    filler = [f"1,{n}" for n in range(6)]
    actions = {  # s0 (0,3), s1 (2,3), s3 (0,0) ranked first; s2 (5,7) ranked 6th
        ids[0]: ["0,3"] + filler[:5], ids[1]: ["2,3"] + filler[:5], ids[2]: filler[:5] + ["5,7"],
        ids[3]: ["0,0"] + filler[:5]}
    for nid, keys in actions.items():  # (then every other pair, lower: the official evaluator takes K = 48 here)
        keys = keys + [f"{v},{n}" for v in range(NV) for n in range(NN) if f"{v},{n}" not in keys]
        doc["results"][nid]["action"] = {k: 1.0 - 0.01 * j for j, k in enumerate(keys)}
    (tmp_path / "val.json").write_text(json.dumps(doc))
    few = json.loads(json.dumps(doc))  # fewer than the evaluator takes: refused (was: scored)
    few["results"][ids[0]]["action"] = dict(list(few["results"][ids[0]]["action"].items())[:6])
    (tmp_path / "few.json").write_text(json.dumps(few))
    with pytest.raises(LeapError, match="6 action scores, where EPIC's anticipation evaluator takes exactly 48"):
        load_scores(tmp_path / "few.json")
    sub.write_submission(tmp_path / "val.zip", doc)
    ann = Annotations(ann_dir)
    a = evaluate_scores(load_scores(tmp_path / "val.json"), ann, "val", "anticipation")
    b = evaluate_scores(load_scores(tmp_path / "val.zip"), ann, "val", "anticipation")
    assert a["anticipation"] == b["anticipation"]
    assert a["anticipation"]["overall"]["action"]["mt5r"] == 0.75  # the given action scores, not verb x noun
    assert load_scores(tmp_path / "val.json")["meta"]["task"] == "anticipation"
    # recognition ignores submitted action scores, as the official recognition evaluator does
    r = evaluate_scores(load_scores(tmp_path / "val.zip"), ann, "val", "recognition")
    assert r["recognition"]["all"]["action"]["top1"] == 0.25
    del doc["results"][ids[1]]["action"]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(LeapError, match="some segments but not all"):
        load_scores(tmp_path / "bad.json")
    del doc["results"][ids[2]]["verb"]["4"]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(LeapError, match="do not cover the class ids"):
        load_scores(tmp_path / "bad.json")


def _numpy1_files(tmp_path, ids, verbs, nouns):
    """Official results as NumPy 1.x wrote them: numpy.core names, pickle protocol 2 (bytes via _codecs.encode)."""
    import io
    import pickle
    import zipfile

    d = {"narration_id": np.array(ids), "verb_output": np.random.rand(len(ids), verbs).astype(np.float32),
         "noun_output": np.random.rand(len(ids), nouns)}
    old = lambda b: b.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # noqa: E731
    raw = old(pickle.dumps(d, protocol=2))
    assert b"_codecs\nencode" in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "np1.pkl").write_bytes(raw)
    buf = io.BytesIO()
    torch.save(d, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n in zin.namelist():
            z.writestr(n, old(zin.read(n)) if n.endswith("data.pkl") else zin.read(n))
    (tmp_path / "np1.pt").write_bytes(out.getvalue())
    return d


def test_numpy1_and_protocol2_results_are_read(tmp_path):
    d = _numpy1_files(tmp_path, ["P01_11_0", "P01_11_1"], 97, 300)
    for name in ("np1.pkl", "np1.pt"):
        s = load_scores(tmp_path / name)
        assert s["narration_id"] == ["P01_11_0", "P01_11_1"]
        assert torch.equal(s["verb_output"], torch.from_numpy(d["verb_output"]))
        assert s["noun_output"].dtype == torch.float64  # float64 input stays float64 (no new ties)
        assert torch.equal(s["noun_output"], torch.from_numpy(d["noun_output"]))


def test_other_globals_stay_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"verb_output": Evil()}, protocol=2))
    with pytest.raises(LeapError, match="posix.system is not allowed|os.system is not allowed"):
        load_scores(tmp_path / "evil.pkl")


@pytest.mark.parametrize("verbs,nouns", [(98, 300), (96, 299)])
def test_evaluate_checks_class_counts_like_submit(tmp_path, epic_dir, verbs, nouns):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    ids = [s.narration_id for s in Annotations(epic_dir).segments("val")]
    save_scores(tmp_path / "s.pt", ids, torch.randn(len(ids), verbs), torch.randn(len(ids), nouns))
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--scores", str(tmp_path / "s.pt"),
                                   "--annotations", str(epic_dir)])
    assert isinstance(res.exception, LeapError)
    bad = "verb" if verbs != 97 else "noun"
    assert f"{bad}_output has {verbs if bad == 'verb' else nouns} classes, the class file needs" in str(res.exception)


def test_a_pickle_of_torch_tensors_is_read_and_cannot_run_code(tmp_path, ann_dir):
    """The docs say .pkl files hold "NumPy arrays or tensors"; a pickle of tensors was refused (only NumPy's
    globals were admitted). Tensors are rebuilt through torch.load(weights_only=True), so code stays out."""
    import warnings

    ids, verb, noun = _val_scores()
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        with open(tmp_path / "t.pkl", "wb") as f:
            pickle.dump({"narration_id": ids, "verb_output": verb, "noun_output": noun.double()[:, :]}, f,
                        protocol=proto)
        s = load_scores(tmp_path / "t.pkl")
        assert torch.equal(s["verb_output"], verb) and torch.equal(s["noun_output"], noun.double())
    with open(tmp_path / "p.pkl", "wb") as f:  # nn.Parameter (torch._utils._rebuild_parameter) was refused
        pickle.dump({"narration_id": ids, "verb_output": torch.nn.Parameter(verb), "noun_output": noun}, f)
    s = load_scores(tmp_path / "p.pkl")
    assert type(s["verb_output"]) is torch.Tensor and torch.equal(s["verb_output"], verb)
    assert not s["verb_output"].requires_grad  # (.numpy() and the metrics refuse a tensor that requires grad)

    class Evil:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (pickle.dumps(print),))  # would unpickle with weights_only=False

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"verb_output": Evil()}, f)
    with pytest.raises(LeapError, match="cannot read the pickle"), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        load_scores(tmp_path / "evil.pkl")
    assert not said, [str(w.message) for w in said]  # (the one line, not torch's note of the bytes' pickle protocol)


def test_scores_suffixes_are_case_blind_and_unknown_ones_refused(tmp_path, ann_dir):
    """`.PKL` was read with torch.load ("not a file written by torch.save"); `.pickle` too."""
    ids, verb, noun = _val_scores()
    for name in ("A.PKL", "b.pickle", "c.Pt"):
        if name.lower().endswith("pt"):
            save_scores(tmp_path / name, ids, verb, noun)
        else:
            with open(tmp_path / name, "wb") as f:
                pickle.dump({"narration_id": ids, "verb_output": verb.numpy(), "noun_output": noun.numpy()}, f)
        assert load_scores(tmp_path / name)["narration_id"] == ids
    (tmp_path / "s.npz").write_bytes(b"x")
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "s.npz")
    assert "unknown scores file suffix '.npz'" in e.value.one_line() and ".pkl" in e.value.one_line()


def test_submit_refuses_an_out_that_is_not_a_zip(tmp_path, ann_dir):
    """`--out sub.json` wrote a zip named .json, which `leap evaluate --scores` then read as bad JSON."""
    s = _test_scores()
    save_scores(tmp_path / "test.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    res = CliRunner().invoke(app, ["submit", "--scores", str(tmp_path / "test.pt"), "--annotations", str(ann_dir),
                                   "--out", str(tmp_path / "sub.json"), "--sls-pt", "0", "--sls-tl", "3",
                                   "--sls-td", "3"])
    assert isinstance(res.exception, LeapError) and "not a .zip" in str(res.exception), res.output
    assert "sub.zip" in res.exception.fix and not (tmp_path / "sub.json").exists()


def test_submit_has_no_default_supervision_levels(tmp_path, ann_dir):
    """The defaults 2/3/4 declared train+val training data (TD 4) and video pre-training (PT 2) for any model,
    though `leap train` trains on the train split only; the levels are the user's to declare."""
    s = _test_scores()
    save_scores(tmp_path / "test.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    base = ["submit", "--scores", str(tmp_path / "test.pt"), "--annotations", str(ann_dir),
            "--out", str(tmp_path / "s.zip")]
    res = CliRunner().invoke(app, base + ["--sls-td", "3"])
    assert isinstance(res.exception, LeapError) and not (tmp_path / "s.zip").exists(), res.output
    assert "--sls-pt, --sls-tl not given" in res.exception.message and "TD 3" in res.exception.fix
    res = CliRunner().invoke(app, base + ["--sls-pt", "0", "--sls-tl", "5", "--sls-td", "3"])
    assert res.exit_code == 0, res.output
    doc = sub.read_submission(tmp_path / "s.zip")
    assert (doc["sls_pt"], doc["sls_tl"], doc["sls_td"]) == (0, 5, 3)


def test_missing_tail_and_unseen_lists_are_warned_once(tmp_path, ann_dir, caplog):
    """Without EPIC_100_tail_*.csv or the unseen-participant list the tail and unseen rows were null without a
    word, as if no segment were in them."""
    (ann_dir / "EPIC_100_tail_verbs.csv").unlink()
    (ann_dir / "EPIC_100_unseen_participant_ids_validation.csv").unlink()
    ids, verb, noun = _val_scores()
    scores = {"narration_id": ids, "verb_output": verb, "noun_output": noun}
    with caplog.at_level("WARNING"):
        for _ in range(2):
            r = evaluate_scores(scores, Annotations(ann_dir), "val")
    assert r["recognition"]["tail"]["verb"]["top1"] is None and r["recognition"]["unseen"]["verb"]["top1"] is None
    said = [m for m in caplog.messages if "not found" in m]
    assert len(said) == 2, said
    assert "EPIC_100_tail_verbs.csv" in said[0] and "EPIC_100_unseen_participant_ids_validation.csv" in said[1]


def _zip(path, text: str, encoding: str = "utf-8"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("test.json", text.encode(encoding))
    return path


@pytest.mark.parametrize("chunk", [1 << 20, 7])  # (7 bytes: every number, key and entry cut between chunks)
def test_the_written_submission_is_checked_an_entry_at_a_time_as_a_whole_parse_checks_it(tmp_path, monkeypatch, chunk):
    """submit and --check read test.json's results one entry at a time (a whole test split parsed was ~380 MB):
    the same summary as a whole parse, whatever the property order, indentation, BOM or UTF-16; the same faults."""
    monkeypatch.setattr(sub._JsonStream, "CHUNK", chunk)
    ids = [f"P01_101_{i}" for i in range(5)]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=2, sls_td=3,
                              with_actions=True)
    whole = sub.check_submission(json.loads(json.dumps(doc)), ids, 97, 300)
    results_first = {"results": doc["results"], **{k: v for k, v in doc.items() if k != "results"}}
    for i, (d, kw, encoding) in enumerate([(doc, {}, "utf-8"), (results_first, {"indent": 1}, "utf-8"),
                                            (doc, {}, "utf-8-sig"), (doc, {"indent": 2}, "utf-16")]):
        path = _zip(tmp_path / f"{i}.zip", json.dumps(d, **kw), encoding)
        assert sub._check_streamed(path, ids, 97, 300) == whole, (i, chunk)
    text = json.dumps(doc)
    cases = {
        "holds two entries in results: P01_101_0": text.replace(f'"{ids[1]}":', f'"{ids[0]}":', 1),  # json.loads kept the last
        "not valid JSON": text + " {}",
        "is not valid JSON (Expecting": text[:-1],  # cut: the results' object is not closed
        "action scores in a recognition submission": text.replace("action_anticipation", "action_recognition"),
        "Expecting property name": text.replace(f'"{ids[2]}":', "7:", 1),  # (raw_decode would take a number)
        "Expecting ':' delimiter": text.replace(f'"{ids[3]}":', f'"{ids[3]}" ', 1),  # (json's own words)
        "Expecting ',' delimiter": text.replace(f'}}, "{ids[4]}"', f'}} "{ids[4]}"', 1),
    }
    for says, bad in cases.items():
        if says.endswith("delimiter"):
            with pytest.raises(json.JSONDecodeError, match=says):
                json.loads(bad)
        with pytest.raises(LeapError, match=re.escape(says) if "(" in says else says):
            sub._check_streamed(_zip(tmp_path / "bad.zip", bad), ids, 97, 300)


def test_float64_scores_past_float32s_range_are_finite_as_written():
    """Was wrong: check_scores looked for NaN and infinity in a float32 copy, so a float64 score of 1e39 (finite,
    and written as such) was refused as infinity."""
    s = _test_scores()
    s["verb_output"] = s["verb_output"].double()
    s["verb_output"][0, 0] = 1e39
    sub.check_scores(s, TEST_IDS, NV, NN)
    s["verb_output"][1, 0] = float("inf")
    with pytest.raises(LeapError, match=r"verb_output holds NaN or infinity for 1 segment"):
        sub.check_scores(s, TEST_IDS, NV, NN)
