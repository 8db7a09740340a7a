"""Gaps a hand-made mutation run found in leap_cli/media/write.py, leap_cli/shards/check.py,
leap_cli/train/optim.py, leap_cli/report/html.py and leap_cli/report/programs_html.py: each test here fails on a
small change of that code that the rest of the suite let through. Values are worked by hand in the comments."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from leap_cli.train.config import OptimConfig
from leap_cli.train.optim import CosineWithWarmup, build_optimizer, layer_id, param_groups


# ---------------------------------------------------------------------------------------------- optimizer groups
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)


class _Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.ModuleList([_Block(), _Block()])
        self.balance = nn.Parameter(torch.zeros(2, 4))  # 2-D on purpose: only its name says "no decay"


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 2)
        self.transformer = _Transformer()


class _Tiny(nn.Module):
    """The layout param_groups reads: a backbone stem, 2 backbone blocks, parts above them."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.verb_head = nn.Linear(4, 3)
        self.step_embed = nn.Embedding(5, 4)  # an embedding table: 2-D, no decay by its module's kind
        self.query_embed = nn.Parameter(torch.zeros(3, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _by_name(cfg: OptimConfig, model: nn.Module | None = None) -> dict[str, dict]:
    return {n: g for g in param_groups(model or _Tiny(), cfg) for n in g["names"]}


def test_layer_decay_and_backbone_scale_by_hand():
    """2 backbone blocks: the stem is layer 0, block i layer i+1, the rest layer 3 (full lr). With layer_decay 0.5
    and backbone_lr_scale 0.1: stem 0.5**3 * 0.1, block 0 0.5**2 * 0.1, block 1 0.5 * 0.1, heads 1."""
    cfg = OptimConfig(layer_decay=0.5, backbone_lr_scale=0.1)
    g = _by_name(cfg)
    assert g["backbone.conv1.weight"]["layer"] == 0
    assert g["backbone.transformer.resblocks.0.fc.weight"]["layer"] == 1
    assert g["backbone.transformer.resblocks.1.fc.weight"]["layer"] == 2
    assert g["verb_head.weight"]["layer"] == 3
    assert g["backbone.conv1.weight"]["lr_scale"] == pytest.approx(0.0125)
    assert g["backbone.transformer.resblocks.0.fc.weight"]["lr_scale"] == pytest.approx(0.025)
    assert g["backbone.transformer.resblocks.1.fc.weight"]["lr_scale"] == pytest.approx(0.05)
    assert g["verb_head.weight"]["lr_scale"] == pytest.approx(1.0)
    # a backbone parameter outside the blocks but under transformer. (UniFormerV2's fusion) is above them
    assert g["backbone.transformer.balance"]["layer"] == 3
    assert g["backbone.transformer.balance"]["lr_scale"] == pytest.approx(1.0)
    # and the AdamW built from them starts each group at lr x its scale, with the config's betas and eps
    cfg = dataclasses.replace(cfg, lr=2e-3, betas=(0.8, 0.9), eps=1e-6)
    opt = build_optimizer(_Tiny(), cfg)
    lrs = {n: grp["lr"] for grp in opt.param_groups for n in grp["names"]}
    assert lrs["backbone.conv1.weight"] == pytest.approx(2e-3 * 0.0125)
    assert lrs["verb_head.weight"] == pytest.approx(2e-3)
    assert all(tuple(grp["betas"]) == (0.8, 0.9) and grp["eps"] == 1e-6 for grp in opt.param_groups)


def test_frozen_parameters_get_no_group():
    names = set(_by_name(OptimConfig()))
    assert "frozen.weight" not in names and "frozen.bias" not in names
    assert "verb_head.weight" in names


def test_no_weight_decay_on_embeddings_tokens_and_fusion_weights():
    """Embedding tables and the parameters named as embeddings/tokens/balance are 2-D but take no weight decay."""
    g = _by_name(OptimConfig(weight_decay=0.05))
    for name in ("step_embed.weight", "query_embed", "backbone.transformer.balance"):
        assert g[name]["weight_decay"] == 0.0, name
    assert g["verb_head.weight"]["weight_decay"] == pytest.approx(0.05)
    assert g["verb_head.bias"]["weight_decay"] == 0.0


def test_layer_id_under_ddp_and_compile_prefixes():
    """A DDP (module.) or compiled (_orig_mod.) model's names give the same layers as the bare model's."""
    for prefix in ("", "module.", "_orig_mod.", "module._orig_mod."):
        assert layer_id(prefix + "backbone.conv1.weight", 2) == 0, prefix
        assert layer_id(prefix + "backbone.transformer.resblocks.1.fc.weight", 2) == 2, prefix
        assert layer_id(prefix + "verb_head.weight", 2) == 3, prefix


def test_param_groups_of_a_wrapped_model_scale_the_backbone_as_the_bare_models():
    """A model wrapped by DDP (module.) or torch.compile (_orig_mod.) before its optimizer is built: the backbone
    keeps its backbone_lr_scale (under _orig_mod. it was lost: a 10x larger lr for the whole backbone)."""
    cfg = OptimConfig(layer_decay=0.5, backbone_lr_scale=0.1)
    bare = {n: g["lr_scale"] for n, g in _by_name(cfg).items()}
    for attr in ("module", "_orig_mod"):
        wrapper = nn.Module()
        setattr(wrapper, attr, _Tiny())
        wrapped = {n.removeprefix(attr + "."): g["lr_scale"] for n, g in _by_name(cfg, wrapper).items()}
        assert wrapped == pytest.approx(bare), attr


# ---------------------------------------------------------------------------------------------- schedule
def _sched(**kw) -> tuple[torch.optim.Optimizer, CosineWithWarmup]:
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": 1.0},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr_scale": 0.25}], lr=1.0)
    return opt, CosineWithWarmup(opt, **kw)


def test_schedule_values_by_hand():
    """warmup 3 of 11 steps, floor 0.1: warmup lrs (k+1)/4; then 0.1 + 0.9 * (1 + cos(pi * (k - 3) / 8)) / 2,
    the floor from step 11 on (and no rise after it)."""
    opt, s = _sched(peak_lr=2.0, total=11, warmup=3, min_lr_ratio=0.1)
    want = [(k + 1) / 4 for k in range(3)] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - 3) / 8))
                                              for k in range(3, 12)] + [0.1] * 4
    got, scaled = [], []
    for _ in want:
        got.append(opt.param_groups[0]["lr"] / 2.0)
        scaled.append(opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"])
        assert s.get_last_lr() == pytest.approx(opt.param_groups[0]["lr"])
        s.step()
    assert got == pytest.approx(want)
    assert scaled == pytest.approx([0.25] * len(want))  # each group keeps its lr_scale


def test_schedule_clamps_warmup_and_total():
    """A warmup longer than the run ends at the run's end; a total of 0 counts as 1 step."""
    _, s = _sched(peak_lr=1.0, total=4, warmup=10)
    assert s.warmup == 4 and [s.factor(k) for k in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    _, s = _sched(peak_lr=1.0, total=0, warmup=0)
    assert s.total == 1 and s.factor(0) == pytest.approx(1.0) and s.factor(1) == pytest.approx(0.0)


def test_schedule_resumes_at_its_step():
    opt, s = _sched(peak_lr=1.0, total=10, warmup=2)
    state = s.state_dict()
    for _ in range(6):
        s.step()
    want = opt.param_groups[0]["lr"]
    opt2, s2 = _sched(peak_lr=1.0, total=10, warmup=2)
    s2.load_state_dict({**state, "step_count": 6})
    assert opt2.param_groups[0]["lr"] == pytest.approx(want) and opt2.param_groups[1]["lr"] == pytest.approx(want / 4)


# ---------------------------------------------------------------------------------------------- html blocks
def test_esc_quotes_and_controls():
    """Attributes are single-quoted (aria-label='...', class='tag ...'): a quote in record text must not end them."""
    from leap_cli.report.html import esc

    assert esc("it's <b>&\"") == "it&#x27;s &lt;b&gt;&amp;&quot;"
    assert "\u202e" not in esc("abc\u202edef") and "202e" in esc("abc\u202edef")


def test_bar_chart_geometry_and_escaping():
    """width 560 - 170 label - 60 value = 330 px for the largest value; 3 rows of 18 px + 24 + 6 = 84 px high."""
    from leap_cli.report.html import LABEL_CHARS, bar_chart

    svg = bar_chart("a<b's", [("x", 2.0), ("y", 1.0), ("z", 0.5)])
    assert "height='84'" in svg
    assert re.findall(r"<rect x='170' y='\d+' width='([\d.]+)'", svg) == ["330.0", "165.0", "82.5"]
    assert "aria-label='a&lt;b&#x27;s'" in svg and ">a&lt;b&#x27;s</text>" in svg
    assert ">0.5</text>" in svg and ">2</text>" in svg  # values as written, no forced rounding
    no_title = bar_chart("t", [("x", 1.0)], show_title=False)
    assert "font-weight='bold'" not in no_title and "height='28'" in no_title  # 18 + 4 + 6
    # a label of exactly LABEL_CHARS is kept whole, a longer one is cut to LABEL_CHARS - 1 and an ellipsis
    exact, longer = "e" * LABEL_CHARS, "f" * (LABEL_CHARS + 1)
    svg = bar_chart("t", [(exact, 1.0), (longer, 1.0)])
    assert f">{exact}<title>" in svg and ">" + "f" * (LABEL_CHARS - 1) + "…<title>" in svg
    # nothing to plot: said, escaped; all zeros: zero-width bars, no division by zero
    assert bar_chart("<t>", []) == "<p class='muted'>&lt;t&gt;: nothing to plot</p>"
    assert "width='0.0'" in bar_chart("t", [("a", 0.0)])


def test_page_title_escaped_and_utf8():
    from leap_cli.report.html import page

    out = page("a</title><script>", "<p>x</p>")
    assert "<title>a&lt;/title&gt;&lt;script&gt;</title>" in out and "<meta charset='utf-8'>" in out


def test_jpeg_data_uri_decodes_and_follows_quality():
    import base64

    import cv2
    import numpy as np

    from leap_cli.report.html import jpeg_data_uri

    img = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    uri = jpeg_data_uri(img, quality=95)
    assert uri.startswith("data:image/jpeg;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR).shape == (32, 48, 3)
    assert len(jpeg_data_uri(img, quality=20)) < len(uri)


# ---------------------------------------------------------------------------------------------- check-shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards of 3, 3 and 1 samples (frames 48x32), built as tests/test_shards.py builds them."""
    from tests.test_shards import build, make_root

    base = tmp_path_factory.mktemp("mutshards")
    return build(make_root(base / "root"), base / "work").out


def _copy(shards, tmp_path):
    import json
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(shards, out)
    return out, json.loads((out / "manifest.json").read_text())


def _save(out, m):
    import json

    (out / "manifest.json").write_text(json.dumps(m))


def _samples(out, info) -> list[tuple[str, dict]]:
    from leap_cli.shards.format import group_sample, parse_members, read_sample_at

    with open(out / info["name"], "rb") as f:
        return [group_sample(parse_members(read_sample_at(f, o, s))) for o, s in zip(info["offsets"], info["sizes"])]


def _rewrite(out, m, i, samples):
    """Shard ``i`` written anew from (key, fields) with a manifest entry that matches it (sizes, CRCs, sha256)."""
    import hashlib
    import zlib

    from leap_cli.shards.format import sample_bytes, tar_end

    info = m["shards"][i]
    blobs = [sample_bytes(k, f) for k, f in samples]
    data = b"".join(blobs) + tar_end()
    (out / info["name"]).write_bytes(data)
    offsets = [sum(len(b) for b in blobs[:j]) for j in range(len(blobs))]
    info.update(keys=[k for k, _ in samples], offsets=offsets, sizes=[len(b) for b in blobs],
                crc32s=[zlib.crc32(b) for b in blobs], bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                count=len(samples))
    _save(out, m)


def test_check_counts_samples_and_reports_progress_in_samples(shards):
    from leap_cli.shards.check import check_shards

    seen = []
    r = check_shards(shards, progress=lambda done, total: seen.append((done, total)))
    assert (r.shards, r.samples, r.ok, r.problems) == (3, 7, 7, [])
    assert seen == [(3, 7), (6, 7), (7, 7)]


def test_check_refuses_an_unknown_on_error(shards):
    from leap_cli.errors import LeapError
    from leap_cli.shards.check import check_shards

    with pytest.raises(LeapError, match="on-error must be raise or skip"):
        check_shards(shards, on_error="warn")


def test_a_short_shard_says_both_sizes_and_nothing_else(shards, tmp_path):
    """The last shard cut by its end-of-archive block (its sample intact): one problem, the sizes, no sha256 line."""
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    last = out / m["shards"][2]["name"]
    size = last.stat().st_size
    last.write_bytes(last.read_bytes()[:-512])
    r = check_shards(out, on_error="skip")
    assert r.problems == [{"shard": m["shards"][2]["name"], "sample": None,
                           "problem": f"shard has {size - 512} bytes, the manifest says {size}"}]
    assert r.ok == 7


def test_no_hash_skips_the_sha256_and_no_decode_skips_the_jpegs(shards, tmp_path):
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    first = out / m["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    data[-10:] = b"\x01" * 10  # in the end-of-archive block: no sample changes, the sha256 does
    first.write_bytes(bytes(data))
    assert [p["problem"] for p in check_shards(out, on_error="skip").problems] == [
        "shard sha256 differs from the manifest"]
    assert check_shards(out, on_error="skip", verify_hash=False).problems == []
    # a JPEG that does not decode, in a manifest without CRCs (written before leap stored them)
    out2, m2 = _copy(shards, tmp_path / "b")
    samples = _samples(out2, m2["shards"][1])
    key, fields = samples[0]
    jpg = sorted(k for k in fields if k.endswith(".jpg"))[0]
    fields[jpg] = b"not a jpeg"
    _rewrite(out2, m2, 1, samples)
    for s in m2["shards"]:
        s.pop("crc32s")
    _save(out2, m2)
    r = check_shards(out2, on_error="skip")
    assert [p["sample"] for p in r.problems] == [key] and r.ok == 6
    r = check_shards(out2, on_error="skip", decode=False)
    assert r.problems == [] and r.ok == 7


def test_frame_sizes_are_checked_when_the_manifest_has_them(shards, tmp_path):
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    m.pop("frame_sizes")  # an older manifest: nothing to compare with
    _save(out, m)
    assert check_shards(out).ok == 7
    m["frame_sizes"] = {"P01_01": [48, 32], "P01_02": [64, 32]}
    _save(out, m)
    r = check_shards(out, on_error="skip")
    assert r.problems and all(p["problem"] == "ValueError: frames are 48x32, the manifest's frame_sizes say 64x32 "
                                              "for video P01_02" for p in r.problems)
    assert r.ok + len(r.problems) == 7


@pytest.mark.parametrize("edit, says", [
    (lambda k, f: (k, {n: v for n, v in f.items() if n != "json"}), "KeyError: 'json'"),
    (lambda k, f: (k, {n: v for n, v in f.items() if not n.endswith(".jpg")}), "ValueError: no frames"),
    (lambda k, f: (k, {**f, "json": f["json"].replace(k.encode(), b"P99_99_9")}),
     "ValueError: json names another narration id"),
])
def test_a_bad_sample_is_named_with_the_fix(shards, tmp_path, edit, says):
    """In skip mode the sample and its problem are listed and the others still checked; in raise mode the error
    names the shard file, the sample and what to do."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    samples = _samples(out, m["shards"][0])
    key = samples[1][0]
    samples[1] = edit(*samples[1])
    _rewrite(out, m, 0, samples)
    r = check_shards(out, on_error="skip")
    assert r.problems == [{"shard": m["shards"][0]["name"], "sample": key, "problem": says}] and r.ok == 6
    with pytest.raises(LeapError) as e:
        check_shards(out)
    assert e.value.record == f"sample {key}" and e.value.path.endswith(m["shards"][0]["name"])
    assert "build-shards" in (e.value.fix or "")


def test_a_sample_out_of_the_manifests_order_is_named(shards, tmp_path):
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    keys = m["shards"][0]["keys"]
    keys[0], keys[1] = keys[1], keys[0]
    _save(out, m)
    r = check_shards(out, on_error="skip")
    assert [p["sample"] for p in r.problems] == keys[:2] and r.ok == 5
    assert r.problems[0]["problem"] == f"ValueError: found sample {keys[1]!r} where the manifest has {keys[0]!r}"


# ---------------------------------------------------------------------------------------------- validate-programs page
def _chart(page: str, heading: str) -> list[tuple[str, str]]:
    """(label, value) rows of the chart under ``<h2>heading</h2>``."""
    from leap_cli.report.html import esc

    part = page.split(f"<h2>{esc(heading)}</h2>", 1)[1].split("</svg>", 1)[0]
    return re.findall(r"<title>(.*?)</title></text><rect [^>]*/><text [^>]*>([^<]*)</text>", part)


def _rep(**kw) -> dict:
    rep = {"split": "val", "records": 9, "duplicates": 1, "malformed": [],
           "coverage": {"valid": 3, "segments": 8, "fraction": 0.375, "of": "segments"},
           "statuses": {"valid": 3, "invalid": 4, "failed": 2},
           "histograms": {"steps": {"10": 1, "2": 2, "1": 4},
                          "control_flow": {"loop": 5, "conditional": 1, "routine": 0, "programs_with_loop": 2,
                                           "programs_with_conditional": 1, "programs_with_routine": 0},
                          "verbs": {f"v{i:02d}": i for i in range(1, 31)},
                          "objects": {"cup": 2, "bowl": 2, "knife": 7}, "predicates": {}}}
    rep.update(kw)
    return rep


def test_programs_page_numbers_and_charts():
    from leap_cli.report.programs_html import TOP, programs_report_html

    page = programs_report_html(_rep(malformed=[{"file": "a.jsonl", "line": 3, "problem": "not JSON"}]))
    assert "<title>Action programs: val split</title>" in page
    assert "3 valid programs over 8 segments (37.5%)" in page
    assert "9 records, 1 duplicate &middot; 1 line that is not a record" in page
    assert "coverage counts the records" not in page  # only when the split has no annotations file
    status = re.search(r"aria-label='Records by status'>.*?</svg>", page).group(0)
    assert re.findall(r"<title>(.*?)</title>", status) == ["valid", "invalid", "failed"]
    # most frequent first, ties by name, the top TOP only
    assert _chart(page, "Objects (top 25)") == [("knife", "7"), ("bowl", "2"), ("cup", "2")]
    verbs = _chart(page, f"Sub-action verbs (top {TOP})")
    assert len(verbs) == TOP and verbs[0] == ("v30", "30") and verbs[-1] == ("v06", "6")
    # step counts in numeric order, not as text ("10" after "2")
    assert [k for k, _ in _chart(page, "Sub-actions per program (then-branches, each loop once)")] == ["1", "2", "10"]
    assert _chart(page, "Valid programs with at least one") == [("loop", "2"), ("conditional", "1"), ("routine", "0")]
    assert _chart(page, "Control-flow steps of each kind (all valid programs)") == [
        ("loop", "5"), ("conditional", "1"), ("routine", "0")]
    assert "<p class='muted'>Validated" not in page
    only_records = programs_report_html(_rep(coverage={"valid": 3, "segments": 9, "of": "records"}))
    assert "over 9 records" in only_records and "coverage counts the records" in only_records


def test_programs_page_escapes_record_text():
    """Narration ids, statuses, messages, file names and split names come from files a user (or an LLM) wrote."""
    from leap_cli.report.programs_html import programs_report_html

    bad = "x'><script>alert(1)</script>"
    page = programs_report_html(_rep(
        split=bad, files=[f"/p/{bad}.jsonl"],
        coverage={"valid": 1, "segments": 2, "fraction": 0.5, "not_in_split": 1, "not_in_split_examples": [bad]},
        errors=[{"narration_id": bad, "status": bad, "errors": [{"pointer": "/steps/0", "message": bad},
                                                                 {"pointer": "/x", "message": "second"}]}],
        malformed=[{"file": bad, "line": 1, "problem": bad}]))
    assert "<script>" not in page and "x'>" not in page
    assert "1 record is not a segment of the x&#x27;&gt;&lt;script&gt;" in page  # the paragraph is there, escaped
    assert "/steps/0 x&#x27;" in page and "second" not in page  # the first finding of each record


def test_programs_page_tables_show_the_first_rows_and_say_so():
    from leap_cli.report.programs_html import ROWS, programs_report_html

    def errs(n):
        return [{"narration_id": f"P01_{i:04d}", "status": "invalid", "errors": []} for i in range(n)]

    def bad(n):
        return [{"file": "f.jsonl", "line": i + 1, "problem": f"problem {i}"} for i in range(n)]

    full = programs_report_html(_rep(errors=errs(ROWS), malformed=bad(ROWS)))
    assert f"Records with findings ({ROWS})" in full and f"Lines that are not program records ({ROWS})" in full
    over = programs_report_html(_rep(errors=errs(ROWS + 1), malformed=bad(ROWS + 1)))
    assert f"Records with findings ({ROWS + 1}, the first {ROWS} shown)" in over
    assert f"Lines that are not program records ({ROWS + 1}, the first {ROWS} shown)" in over
    assert f"P01_{ROWS - 1:04d}" in over and f"P01_{ROWS:04d}" not in over
    assert f"problem {ROWS - 1}<" in over and f"problem {ROWS}<" not in over


# ---------------------------------------------------------------------------------------------- writing videos
def test_frame_rates_written_exactly():
    """NTSC rates as 1001ths, other rates as themselves (a 1 fps or 29.95 fps video is not 1000/1001 or 29.97)."""
    from fractions import Fraction

    from leap_cli.media.write import _rate

    assert _rate(29.97) == Fraction(30000, 1001) and _rate(59.94) == Fraction(60000, 1001)
    assert _rate(23.976) == Fraction(24000, 1001)
    assert _rate(50.0) == 50 and _rate(30.0) == 30 and _rate(1.0) == 1 and _rate(12.5) == Fraction(25, 2)
    assert _rate(29.95) == Fraction(599, 20)


def _packets(path):
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [(p.pts, p.is_keyframe) for p in c.demux(v) if p.size], len(c.streams.audio), v.average_rate


def test_written_video_keyframes_options_and_no_audio_track(tmp_path):
    import numpy as np

    from leap_cli.media.write import write_mp4

    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(12)]
    path = tmp_path / "a.mp4"
    assert write_mp4(path, iter(frames), 25.0, gop=5, codec="libx264", options={"preset": "ultrafast"}) == 12
    packets, audio_tracks, rate = _packets(path)
    assert len(packets) == 12 and [k for k, (_, key) in enumerate(packets) if key] == [0, 5, 10]
    assert audio_tracks == 0 and rate == 25  # no audio given: no (silent) audio track
    # codec options reach the encoder: x264 without B-frames writes its packets in display order
    path = tmp_path / "b.mp4"
    write_mp4(path, iter(frames), 25.0, codec="libx264", options={"preset": "ultrafast", "bf": "0"})
    pts = [p for p, _ in _packets(path)[0]]
    assert pts == sorted(pts)
    path = tmp_path / "c.mp4"
    write_mp4(path, iter(frames), 25.0, codec="libx264", options={"preset": "veryfast", "bf": "3"})
    pts = [p for p, _ in _packets(path)[0]]
    assert pts != sorted(pts)  # (so the check above can tell)


def test_a_writer_with_an_audio_rate_closes_without_audio(tmp_path):
    import numpy as np

    from leap_cli.media.write import Mp4Writer

    w = Mp4Writer(tmp_path / "v.mp4", 64, 48, 25.0, audio_rate=16000)
    for _ in range(3):
        w.write(np.zeros((48, 64, 3), np.uint8))
    w.close()
    assert w.frames == 3 and len(_packets(tmp_path / "v.mp4")[0]) == 3


def _decoded_audio(path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


def test_audio_is_written_whole_and_clipped(tmp_path):
    """3 s at 16 kHz (not a multiple of 1024 samples): all of it is in the file (the encoder's last frames flushed),
    and a signal far over full scale is written at full scale."""
    import numpy as np

    from leap_cli.media.write import write_mp4

    n = 3 * 16000 + 300
    t = np.arange(n) / 16000
    audio = (4.0 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    path = tmp_path / "a.mp4"
    write_mp4(path, (np.zeros((48, 64, 3), np.uint8) for _ in range(76)), 25.0, audio=audio, audio_rate=16000)
    got = _decoded_audio(path)
    assert len(got) >= n
    assert np.abs(got).max() < 1.3  # (AAC overshoots a clipped square a little; unclipped it peaks near 4)


def test_a_sample_whose_json_is_no_object_is_listed_not_a_crash(shards, tmp_path):
    """JSON that parses to a list stopped check-shards with an AttributeError."""
    from leap_cli.shards.check import check_shards

    out, m = _copy(shards, tmp_path)
    samples = _samples(out, m["shards"][0])
    key, fields = samples[1]
    samples[1] = (key, {**fields, "json": b"[1, 2]"})
    _rewrite(out, m, 0, samples)
    r = check_shards(out, on_error="skip")
    assert [p["sample"] for p in r.problems] == [key] and r.ok == 6
    assert "json is a list, not an object" in r.problems[0]["problem"]
