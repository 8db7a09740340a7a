import json

import pytest

from leap_cli.common import ShardSpec, normalize_split
from leap_cli.errors import LeapError
from leap_cli.io import JsonlAppender, atomic_write_text, read_jsonl, stable_hash


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "out.txt"
    atomic_write_text(p, "old")
    from leap_cli.io import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.txt"]


def test_jsonl_resume_skips_done_and_repairs_truncated_line(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as w:
        assert w.write({"narration_id": "a", "v": 1})
        assert w.write({"narration_id": "b", "v": 2})
        assert not w.write({"narration_id": "a", "v": 3})
    with open(p, "a") as f:
        f.write('{"narration_id": "c", "v"')  # a crash mid-line
    with JsonlAppender(p) as w:
        assert w.keys == {"a", "b"} and w.records is None  # keys only, unless keep_records
        assert w.write({"narration_id": "c", "v": 4})
    recs = read_jsonl(p)
    assert [r["narration_id"] for r in recs] == ["a", "b", "c"] and recs[2]["v"] == 4


def test_a_truncated_last_line_is_warned_of_once(tmp_path, caplog):
    """A stage reads its output more than once (its records, then its appender): the same cut line was warned of
    twice (QA: after a full disk)."""
    p = tmp_path / "r.jsonl"
    p.write_text('{"narration_id": "a"}\n{"narration_id": "b", "v"')
    with caplog.at_level("WARNING"):
        assert [r["narration_id"] for r in read_jsonl(p)] == ["a"]
        assert [r["narration_id"] for r in read_jsonl(p)] == ["a"]
    assert caplog.text.count("dropping a truncated last line") == 1, caplog.text
    p.write_text('{"narration_id": "a"}\n{"narration_id": "b"}\n{"narration_id": "c", "v"')  # (another cut: said)
    with caplog.at_level("WARNING"):
        read_jsonl(p)
    assert caplog.text.count("dropping a truncated last line") == 2, caplog.text


def test_jsonl_replace_keys_redoes_records(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as w:
        w.write({"narration_id": "a", "status": "error"})
        w.write({"narration_id": "b", "status": "ok"})
        w.write({"narration_id": "c", "status": "error"})
    with JsonlAppender(p, replace_keys=["a", "c"]) as w:
        assert "a" not in w and "b" in w and "c" not in w
        w.write({"narration_id": "a", "status": "ok"})
        # until it is closed, the old line stays beside the new one (a run killed now loses neither)
        assert [r["narration_id"] for r in read_jsonl(p)] == ["a", "b", "c", "a"]
    # c was not redone (a run cut short, or --limit): its old record stays
    assert [(r["narration_id"], r["status"]) for r in read_jsonl(p)] == [("b", "ok"), ("c", "error"), ("a", "ok")]


def test_jsonl_a_key_written_twice_keeps_its_last_line(tmp_path, caplog):
    """What a run killed while redoing records leaves (or two files concatenated): the next open keeps each
    key's last record and rewrites the file."""
    p = tmp_path / "r.jsonl"
    rows = [{"narration_id": "a", "v": 1}, {"narration_id": "b", "v": 2}, {"narration_id": "a", "v": 3}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with JsonlAppender(p, keep_records=True) as w:
        assert w.records == {"b": {"narration_id": "b", "v": 2}, "a": {"narration_id": "a", "v": 3}}
        assert not w.write({"narration_id": "a", "v": 4})
    assert read_jsonl(p) == rows[1:]
    assert "1 record was there twice" in caplog.text


def test_jsonl_replace_keys_test_is_decided_by_a_keys_last_line(tmp_path):
    # a --retry-errors run killed before its close-time rewrite leaves a key's failed line and then its ok one: the
    # next --retry-errors must not redo (and pay for) the record that succeeded
    p = tmp_path / "r.jsonl"
    rows = [{"k": "a", "status": "failed"}, {"k": "a", "status": "ok"}, {"k": "b", "status": "failed"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with JsonlAppender(p, key="k", replace_keys=lambda r: r["status"] == "failed") as w:
        assert "a" in w and "b" not in w
        assert not w.write({"k": "a", "status": "ok again"})
    assert read_jsonl(p) == rows[1:]


def test_a_line_nested_too_deeply_is_a_leap_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(LeapError, match=r"line 2 is not readable \(JSON nested too deeply\)"):
        read_jsonl(p)


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n{oops\n" + json.dumps({"a": 2}) + "\n")
    with pytest.raises(LeapError, match=r"\[line 2\]"):
        read_jsonl(p)


def test_split_names_and_shards():
    assert normalize_split("validation") == "val" and normalize_split("VAL") == "val"
    with pytest.raises(LeapError, match="unknown split"):
        normalize_split("dev")
    items = list(range(10))
    parts = [ShardSpec.parse(f"{i}/3").select(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    vids = ["v1", "v1", "v2", "v3", "v3", "v3"]
    by_video = [ShardSpec(i, 2).select(vids, key=lambda v: v) for i in range(2)]
    assert by_video == [["v1", "v1", "v3", "v3", "v3"], ["v2"]]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(LeapError):
            ShardSpec.parse(bad)
    with pytest.raises(LeapError, match="numbered from 0") as e:  # (a job array numbered from 1 asked for 2/2)
        ShardSpec.parse("2/2")
    assert "$((TASK_ID - 1))/2" in e.value.one_line()
    with pytest.raises(LeapError, match="n, the number of parts, is at least 1"):  # (it said "numbered from 0")
        ShardSpec.parse("1/0")
    for empty in ("", " "):  # `--shard "$PART"` with PART unset: every array job did the whole split
        with pytest.raises(LeapError, match="--shard is empty"):
            ShardSpec.parse(empty)
    assert ShardSpec.parse(None) == ShardSpec()
    assert stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_apply_the_umask(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        from leap_cli.io import atomic_write_bytes

        atomic_write_bytes(tmp_path / "b.pt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    import os

    p = tmp_path / "metrics.json"
    atomic_write_text(p, "1")
    os.chmod(p, 0o640)
    atomic_write_text(p, "2")
    assert p.stat().st_mode & 0o777 == 0o640 and p.read_text() == "2"


def test_atomic_writes_go_through_links_and_into_special_files_in_place(tmp_path):
    """``--html link.html`` replaced the link with a file (its target kept the old page), and a FIFO or a device
    was replaced by a regular file (as root, ``--html /dev/full`` put a file where the device was)."""
    import os
    import stat
    import threading

    from leap_cli.io import atomic_write_bytes

    real = tmp_path / "pages" / "real.html"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_bytes(fifo, b"page")
    reader.join(timeout=10)
    assert got == [b"page"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_jsonl_complete_last_line_without_newline_is_not_glued(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"narration_id": "a"}) + "\n" + json.dumps({"narration_id": "b"}))
    with JsonlAppender(p) as w:
        assert w.keys == {"a", "b"} and w.records is None  # keys only, unless keep_records
        w.write({"narration_id": "c"})
    assert "lacked its newline" in caplog.text
    assert [r["narration_id"] for r in read_jsonl(p)] == ["a", "b", "c"]
    with JsonlAppender(p) as w:  # the next run reads it without complaint
        assert len(w) == 3


def test_second_writer_of_one_output_is_refused(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as w:
        w.write({"narration_id": "a"})
        with pytest.raises(LeapError, match="another leap process is writing this file") as e:
            JsonlAppender(p)
        assert str(p) in e.value.one_line()
        import os
        import socket

        # the holder is named (an orphaned worker, a job on another node)
        assert f"(process {os.getpid()} on {socket.gethostname()})" in e.value.message
    with JsonlAppender(p) as w:  # released on close
        assert "a" in w
    part = tmp_path / "train.shard1of3.jsonl"  # an array task run twice: another --out would leave a stray part
    with JsonlAppender(part):
        with pytest.raises(LeapError, match=r"part 1/3 is being made by that job: run each --shard part once"):
            JsonlAppender(part)


def test_a_readers_look_at_the_lock_is_no_writer(tmp_path):
    """Was wrong: ``writer_of`` (build-shards looking whether generate-programs still writes the program file)
    takes the lock file's shared lock for a moment; a run starting in that instant was refused as if another
    leap process wrote its output."""
    import fcntl
    import os
    import threading
    import time

    from leap_cli.io import OutputLock, writer_of

    p = tmp_path / "programs.jsonl"
    fd = os.open(str(p) + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a look that lasts 0.1 s (a probe's moment, slowed down)
    threading.Timer(0.1, os.close, (fd,)).start()
    with JsonlAppender(p) as w:
        w.write({"narration_id": "a"})
        assert writer_of(p) is not None
        t0 = time.monotonic()
        with pytest.raises(LeapError, match="another leap process is writing"):  # a writer's lock: at once
            OutputLock(p).acquire()
        assert time.monotonic() - t0 < 0.3
    assert writer_of(p) is None


def test_second_writer_in_another_process_is_refused(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "r.jsonl"
    code = ("import sys; from leap_cli.io import JsonlAppender; from leap_cli.errors import LeapError\n"
            "try:\n    JsonlAppender(sys.argv[1])\nexcept LeapError as e:\n    print(e.one_line()); sys.exit(3)\n")
    with JsonlAppender(p):
        r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert r.returncode == 3 and "another leap process" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_settings_change_is_refused_naming_the_keys(tmp_path):
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "d.jsonl"
    assert not check_settings(out, {"hand_threshold": 0.5, "fov": 90.0})
    out.write_text('{"narration_id": "a"}\n')
    assert not check_settings(out, {"hand_threshold": 0.5, "fov": 90.0})  # same settings: resume
    with pytest.raises(LeapError, match=r"hand_threshold: 0\.5 -> 0\.7") as e:
        check_settings(out, {"hand_threshold": 0.7, "fov": 90.0})
    assert "fov" not in str(e.value) and out.exists()
    assert check_settings(out, {"hand_threshold": 0.7, "fov": 90.0}, force=True)  # starts over
    assert not out.exists()
    assert json.loads(settings_path(out).read_text())["hand_threshold"] == 0.7
    # a key a sidecar written before it was kept lacks: adopted when asked (and kept from then on), else refused
    out.write_text('{"narration_id": "a"}\n')
    new = {"hand_threshold": 0.7, "fov": 90.0, "descriptors": {"frames": 9}}
    with pytest.raises(LeapError, match="descriptors"):
        check_settings(out, new)
    assert not check_settings(out, new, adopt=("descriptors",)) and out.exists()
    assert json.loads(settings_path(out).read_text())["descriptors"] == {"frames": 9}
    with pytest.raises(LeapError, match="descriptors"):
        check_settings(out, {**new, "descriptors": {"frames": 5}}, adopt=("descriptors",))


def test_an_output_without_records_takes_the_new_settings(tmp_path):
    """A run that failed before its first record (weights missing offline, a refused key) leaves an empty output
    and its settings: nothing would be mixed, so the next run with other settings goes on (it was refused until
    --force)."""
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "d.jsonl"
    check_settings(out, {"detector_weights": "coco"})
    out.write_text("")
    assert not check_settings(out, {"detector_weights": None})
    assert json.loads(settings_path(out).read_text())["detector_weights"] is None
    out.write_text('{"narration_id": "a"}\n')
    with pytest.raises(LeapError, match="detector_weights"):
        check_settings(out, {"detector_weights": "coco"})


def test_a_file_merged_from_shard_parts_is_checked_against_the_parts_settings(tmp_path, caplog):
    """README's merge (``cat X.shard*of2.jsonl > X.jsonl``) leaves no settings file beside the merged file: the
    parts' settings (where they agree) stand for it, instead of a later run's being adopted unchecked."""
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "train.jsonl"
    for i in range(2):
        part = tmp_path / f"train.shard{i}of2.jsonl"
        assert not check_settings(part, {"hand_threshold": 0.5}, split="train")
        part.write_text(f'{{"narration_id": "{i}"}}\n')
    out.write_text("".join((tmp_path / f"train.shard{i}of2.jsonl").read_text() for i in range(2)))
    with pytest.raises(LeapError, match=r"hand_threshold: 0\.5 -> 0\.9"):
        check_settings(out, {"hand_threshold": 0.9}, split="train")
    assert not check_settings(out, {"hand_threshold": 0.5}, split="train")  # the parts' settings: resumes
    assert json.loads(settings_path(out).read_text()) == {"hand_threshold": 0.5, "split": "train"}
    # parts made with other settings than each other: their merge is not one run's records (the next stage took
    # it, and recorded its settings as unknown), named with the keys; --force starts it over
    settings_path(out).unlink()
    settings_path(tmp_path / "train.shard1of2.jsonl").write_text('{"hand_threshold": 0.7, "split": "train"}')
    with pytest.raises(LeapError, match=r"train\.jsonl \[settings\]: was merged from --shard parts made with other "
                                        r"settings: train\.shard1of2\.jsonl against train\.shard0of2\.jsonl: "
                                        r"hand_threshold: 0\.5 -> 0\.7 \(run the parts that differ again"):
        check_settings(out, {"hand_threshold": 0.5}, split="train")
    # the part named is the one the others do not agree with (it was always the one against part 0)
    third = tmp_path / "train.shard2of2.jsonl"  # (a name of the same pattern: three sidecars, two agree)
    settings_path(third).write_text('{"hand_threshold": 0.7, "split": "train"}')
    with pytest.raises(LeapError, match=r"other settings: train\.shard0of2\.jsonl against train\.shard1of2\.jsonl "
                                        r"and 1 more: hand_threshold: 0\.7 -> 0\.5"):
        check_settings(out, {"hand_threshold": 0.5}, split="train")
    settings_path(third).unlink()
    from leap_cli.io import stored_settings

    with pytest.raises(LeapError, match="merged from --shard parts made with other settings"):
        stored_settings(out)  # (generate-programs reading the descriptors' settings)
    assert check_settings(out, {"hand_threshold": 0.5}, split="train", force=True) and not out.exists()
    # none at all cannot speak for it: said, and this run's settings are recorded
    lone = tmp_path / "val.jsonl"
    lone.write_text('{"narration_id": "a"}\n')
    assert not check_settings(lone, {"hand_threshold": 0.9})
    assert "no settings file beside it" in caplog.text


@pytest.mark.parametrize("line", ['[1, 2, 3]', '"text"', '7', '{"status": "valid"}'])
def test_resume_over_a_malformed_record_is_one_error_naming_the_line(tmp_path, line):
    p = tmp_path / "programs.jsonl"
    p.write_text('{"narration_id": "a"}\n' + line + '\n{"narration_id": "c"}\n')
    with pytest.raises(LeapError) as e:
        JsonlAppender(p)
    assert e.value.path == str(p) and e.value.record == "line 2" and "malformed record" in e.value.message
    with JsonlAppender(p.with_name("other.jsonl")):  # the lock of the refused file was released: no leak
        pass
    p.write_text('{"narration_id": "a"}\n')
    with JsonlAppender(p) as w:  # the same file, fixed, resumes
        assert "a" in w


def test_a_folder_given_as_an_output_file_is_refused_before_anything_is_written(tmp_path):
    from leap_cli.io import atomic_write_json, check_settings, settings_path

    folder = tmp_path / "out"
    folder.mkdir()
    for call in (lambda: check_settings(folder, {"k": 1}), lambda: JsonlAppender(folder),
                 lambda: atomic_write_json(folder, {}), lambda: read_jsonl(folder)):
        with pytest.raises(LeapError, match="is a folder") as e:
            call()
        assert e.value.path == str(folder)
    assert not settings_path(folder).exists() and list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_atomic_write_names_the_output_not_its_temp_file(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    target = tmp_path / "metrics.json"

    def read_only(*a, prefix="", suffix="", dir=None, **k):  # what mkstemp raises in a read-only folder
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, f"{prefix}abc123{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "x")
    assert e.value.filename == str(target) and e.value.errno == errno.EROFS
    monkeypatch.undo()

    def cannot_rename(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", cannot_rename)
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "x")
    assert e.value.filename == str(target) and e.value.filename2 is None
    assert list(tmp_path.iterdir()) == []


def test_a_cut_inside_a_utf8_character_is_a_truncated_last_line_and_bad_bytes_elsewhere_one_error(tmp_path):
    p = tmp_path / "d.jsonl"
    good = '{"narration_id": "a", "text": "café"}\n'
    p.write_bytes(good.encode() + '{"narration_id": "b", "text": "café'.encode()[:-1])  # cut inside "é"
    assert [r["narration_id"] for r in read_jsonl(p)] == ["a"]
    with JsonlAppender(p) as w:  # resume: the cut line is cut off, the next record starts on a line of its own
        w.write({"narration_id": "b", "text": "café"})
    assert [r["narration_id"] for r in read_jsonl(p)] == ["a", "b"]
    p.write_bytes(good.encode() + b'\xff\xfe{"narration_id": "c"}\n' + good.encode())
    with pytest.raises(LeapError, match="line 2 is not UTF-8 text") as e:
        read_jsonl(p)
    assert e.value.record == "line 2" and e.value.path == str(p)


def test_another_split_into_the_same_output_is_refused(tmp_path):
    """`--split train --out .../val.jsonl` appended train records to the val file: the sidecar keeps the split."""
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "val.jsonl"
    check_settings(out, {"k": 1}, split="val")
    out.write_text('{"narration_id": "P01_11_0"}\n')
    assert not check_settings(out, {"k": 1}, split="val")  # the same split resumes
    with pytest.raises(LeapError, match="holds val records; this run is --split train") as e:
        check_settings(out, {"k": 1}, split="train")
    assert e.value.record == "split" and out.exists() and "--force" in e.value.fix
    assert check_settings(out, {"k": 1}, split="train", force=True) and not out.exists()
    assert json.loads(settings_path(out).read_text()) == {"k": 1, "split": "train"}
    older = tmp_path / "old.jsonl"  # a sidecar written before the split was kept: resumes as before
    older.write_text('{"narration_id": "a"}\n')
    settings_path(older).write_text('{"k": 1}\n')
    assert not check_settings(older, {"k": 1}, split="train") and older.exists()


def test_a_killed_writers_temp_file_is_removed_by_the_next_write_a_live_ones_is_kept(tmp_path):
    """SIGKILL during an atomic write (a checkpoint, a manifest, a frame-cache file) left its hidden temp file
    beside the output for ever: re-runs never removed it (a killed checkpoint save left a copy of the model per
    kill). The next write of the same output removes the temp files of writers that are dead, never those of
    a writer still running."""
    import subprocess
    import sys

    from leap_cli.io import atomic_path

    p = tmp_path / "last.pt"
    code = ("import os, sys; from leap_cli.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half a checkpoint')\n"
            "    os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True)
    assert r.returncode == -9
    left = [f.name for f in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".last.pt.") and left[0].endswith(".tmp")
    with atomic_path(p) as mine:  # a writer that is running (this process): its temp file is kept
        mine.write_bytes(b"in progress")
        atomic_write_text(p, "done")
        assert mine.exists() and not (tmp_path / left[0]).exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"] and p.read_bytes() == b"in progress"


def test_a_folder_is_swept_for_dead_temp_files_once_per_process(tmp_path, monkeypatch):
    """Every atomic write listed its whole folder to find killed writers' temp files: a video's frame-cache
    folder of n segment files cost n listings of up to n names. The folder is listed by a process's first write
    into it; the dead writer's file is gone after that one write."""
    import leap_cli.io as io

    folder = tmp_path / "P01_01"
    folder.mkdir()
    dead = folder / f".seg.0001.jpg.{io._temp_tag().rsplit('-', 1)[0]}-999999999.abcd1234.tmp"
    dead.write_bytes(b"half")
    listed = []
    real = io.os.scandir
    monkeypatch.setattr(io.os, "scandir", lambda p: listed.append(str(p)) or real(p))
    for i in range(20):
        atomic_write_text(folder / f"seg.{i:04d}.jpg", "x")
    assert listed.count(str(folder)) == 1 and not dead.exists()
    assert len(list(folder.iterdir())) == 20


def test_the_sweep_keeps_the_temp_file_of_another_live_writer_and_removes_it_once_that_writer_is_dead(tmp_path):
    # the live writer of test_a_killed_writers_temp_file_... is this process, which the sweep passes over before
    # asking whether it lives: another process that is running keeps its temp file too
    import os
    import subprocess

    import leap_cli.io as io

    child = subprocess.Popen(["sleep", "30"])
    swept = (os.getpid(), str(tmp_path))  # (the sweep's once-per-folder memo)
    temp = tmp_path / f".out.json.{io._temp_tag().rsplit('-', 1)[0]}-{child.pid}.abcd1234.tmp"
    try:
        temp.write_bytes(b"half")
        io._SWEPT.discard(swept)
        atomic_write_text(tmp_path / "out.json", "{}")
        assert temp.exists()
    finally:
        child.kill()
        child.wait()
    io._SWEPT.discard(swept)
    atomic_write_text(tmp_path / "out.json", "{}")
    assert not temp.exists()


def test_force_never_deletes_an_output_another_run_is_writing(tmp_path):
    """`--force` with other settings while the first run was still writing deleted its output (the running
    run went on writing into a deleted file: every record, paid LLM calls included, lost) and put its own
    settings in the sidecar, and only then was refused by the lock. It is refused before it touches anything."""
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "programs.jsonl"
    assert not check_settings(out, {"k": 4})
    with JsonlAppender(out) as running:  # the first run, still writing
        running.write({"narration_id": "a"})
        with pytest.raises(LeapError, match="another leap process is writing this file"):
            check_settings(out, {"k": 2}, force=True)
        running.write({"narration_id": "b"})
    assert [r["narration_id"] for r in read_jsonl(out)] == ["a", "b"]
    assert json.loads(settings_path(out).read_text()) == {"k": 4}


def _sleep_forever():
    import time

    time.sleep(3600)


def test_stop_pool_kills_the_workers_and_does_not_wait_for_good():
    """Pool.terminate/join waited for good when a worker died inside the pool's pipes (a group SIGTERM during
    the workers' start-up): `extract --workers 2` hung until SIGKILL, holding its output's lock."""
    import multiprocessing as mp
    import threading
    import time

    from leap_cli.common import stop_pool

    worker = mp.get_context("spawn").Process(target=_sleep_forever, daemon=True)
    worker.start()
    hung = threading.Event()

    class Stuck:  # a pool whose terminate never returns, as the hung one did
        _pool = [worker]

        def terminate(self):
            hung.wait()

        def join(self):
            pass

    t0 = time.monotonic()
    stop_pool(Stuck(), grace=0.5)
    assert time.monotonic() - t0 < 5
    worker.join(5)
    assert worker.exitcode == -9  # SIGKILLed, not left running
    hung.set()


def _loader_worker(q):
    import os
    import signal
    import time

    from leap_cli.shards.dataset import loader_worker_init

    loader_worker_init(0)
    os.kill(os.getpid(), signal.SIGTERM)  # a process group's SIGTERM reaches the workers too
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    q.put("alive")


def test_dataloader_workers_leave_sigterm_to_the_main_process():
    """A group SIGTERM killed evaluate's DataLoader workers first: torch's "DataLoader worker exited
    unexpectedly" traceback and exit 1 instead of "stopped by SIGTERM" and 143."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_loader_worker, args=(q,))
    p.start()
    assert q.get(timeout=20) == "alive"
    p.join(10)
    assert p.exitcode == 0


def test_a_cut_part_is_named_in_the_order_cat_joined_the_parts(tmp_path):
    """`cat X.shard*of12.jsonl` joins shard10 and shard11 before shard2 (the shell sorts the names): a cut part 11,
    joined to part 2, was taken for a merge made too early, and merging again changed nothing."""
    import json

    from leap_cli.common import merged_input

    parts = {i: tmp_path / f"train.shard{i}of12.jsonl" for i in range(12)}
    for i, p in parts.items():
        p.write_text("".join(json.dumps({"narration_id": f"P{i:02d}_{k}"}) + "\n" for k in range(2)))
    parts[11].write_text(parts[11].read_text()[:-15])  # its job killed while writing its last record
    merged = tmp_path / "train.jsonl"
    merged.write_text("".join(parts[i].read_text() for i in sorted(parts, key=lambda i: parts[i].name)))
    with pytest.raises(LeapError, match=r"train.shard11of12.jsonl ends in a record cut short .*run part 11/12 again"):
        merged_input(merged)
    # the part `cat` joins last (shard9) cut: the line counts agree, and the lost record went unsaid
    parts[11].write_text("".join(json.dumps({"narration_id": f"P11_{k}"}) + "\n" for k in range(2)))
    parts[9].write_text(parts[9].read_text()[:-15])
    merged.write_text("".join(parts[i].read_text() for i in sorted(parts, key=lambda i: parts[i].name)))
    with pytest.raises(LeapError, match=r"ends in a record cut short: train.shard9of12.jsonl, the part `cat` joined "
                                        r"last.*run part 9/12 again"):
        merged_input(merged)


def test_a_lock_file_another_user_left_does_not_block_the_output(tmp_path, monkeypatch):
    """A group member's run (umask 022) killed with its lock file left -rw-r--r--: the owner's next run stopped
    on "lock: Permission denied", even with --force, though the lock holds no data. (Root ignores modes: the
    refusal of a write is simulated.) A holder gone since is not named."""
    import os

    p = tmp_path / "r.jsonl"
    lock = tmp_path / "r.jsonl.lock"
    lock.write_text("999999999 " + __import__("socket").gethostname() + "\n")  # (a pid no process has)
    real = os.open

    def others(path, flags, *a):
        if str(path) == str(lock) and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", others)
    with JsonlAppender(p) as w:
        w.write({"narration_id": "a"})
        with pytest.raises(LeapError, match="another leap process is writing this file") as e:
            JsonlAppender(p)
        assert "(process" not in e.value.message  # (the words in it are the gone holder's)
    import fcntl

    def nfs(fd, mode):  # NFS takes no exclusive lock on a file opened for reading
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", nfs)
    with pytest.raises(LeapError, match="a lock file of another user that this run cannot take") as e:
        JsonlAppender(p)
    assert e.value.path == str(lock) and "delete it (it holds no data)" in e.value.fix
    monkeypatch.undo()
    monkeypatch.setattr(os, "open", real)
    assert [r["narration_id"] for r in read_jsonl(p)] == ["a"]


def test_more_workers_than_cpus_are_warned_of(tmp_path, monkeypatch, caplog):
    """`extract --workers 64` on 2 cores ran 10 times slower than 1 without a word (QA)."""
    from typer.testing import CliRunner

    import leap_cli.common as common
    from leap_cli.cli import app

    monkeypatch.setattr(common, "usable_cpus", lambda: 2)
    for n, said in ((2, False), (3, True)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            CliRunner().invoke(app, ["check-shards", "--shards", str(tmp_path / "none"), "--workers", str(n)])
        assert ("is more than the 2 CPUs this job may use" in caplog.text) == said, caplog.text
        assert not said or f"--workers {n} is more" in caplog.text, caplog.text


def test_a_cgroup_cpu_quota_counts_as_fewer_cpus(tmp_path, monkeypatch):
    """`docker run --cpus 2` (a Kubernetes CPU limit) leaves every CPU of the node in the affinity: the workers
    warning and the loaders' worker cap counted 64 CPUs of which the job may use 2."""
    import os

    import leap_cli.common as common

    def tree(files: dict, cgroup: str):
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        (tmp_path / "self").write_text(cgroup)
        return common.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "self")

    # v2: the smallest quota of the cgroup and those above it; "max" is none
    assert tree({"fs/cpu.max": "max 100000\n", "fs/job/cpu.max": "150000 100000\n",
                 "fs/job/step/cpu.max": "max 100000\n"}, "0::/job/step\n") == 1.5
    # v1 in a container: /proc/self/cgroup names the host's path, the mount holds the container's own cgroup
    (tmp_path / "fs").rename(tmp_path / "v2")
    assert tree({"fs/cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "fs/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
                "4:cpu,cpuacct:/docker/0123abc\n3:memory:/docker/0123abc\n") == 2.0
    assert tree({"fs/cpu,cpuacct/cpu.cfs_quota_us": "-1\n"}, "4:cpu,cpuacct:/\n") is None  # no quota
    assert common.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "missing") is None
    monkeypatch.setattr(common, "cgroup_cpu_quota", lambda: 0.5)  # half a CPU is one
    assert common.usable_cpus() == 1
    monkeypatch.setattr(common, "cgroup_cpu_quota", lambda: 1000.0)
    assert common.usable_cpus() == len(os.sched_getaffinity(0))


def test_weights_only_loads_take_the_allowed_globals_as_the_installed_torch_does(tmp_path, monkeypatch):
    """pyproject admits torch >= 2.3: safe_globals exists from 2.5 and takes (object, name) pairs from 2.6. Every
    detector and CNN14 checkpoint failed to load below 2.5 (AttributeError), and NumPy-holding files on 2.5."""
    import contextlib

    import torch

    from leap_cli.extract.weights import load_checkpoint

    path = tmp_path / "w.pt"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    taken = []

    @contextlib.contextmanager
    def recording(globals_):
        taken.append(list(globals_))
        yield

    monkeypatch.setattr(torch.serialization, "safe_globals", recording, raising=False)  # (none before torch 2.5)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    assert torch.equal(load_checkpoint(path, "test")["model"]["w"], torch.ones(2))
    assert taken and not any(isinstance(g, tuple) for g in taken[-1])  # 2.5: the objects alone
    monkeypatch.delattr(torch.serialization, "safe_globals")  # torch < 2.5
    assert torch.equal(load_checkpoint(path, "test")["model"]["w"], torch.ones(2))
    from leap_cli.io import numpy_safe_globals, weights_only_allowing

    monkeypatch.setattr(torch.serialization, "safe_globals", recording, raising=False)
    monkeypatch.setattr(torch, "__version__", "2.6.0a0+ecf3bae40a")  # (NVIDIA's containers number builds so)
    with weights_only_allowing(numpy_safe_globals()):
        pass
    assert any(isinstance(g, tuple) for g in taken[-1])  # 2.6: (object, name) pairs


def test_shard_parts_of_two_digit_counts(tmp_path):
    """`--shard 1/10`'s file is part (1, 10), not (1, 1): a set of another count beside it is refused (merged, the
    two sets would hold segments twice)."""
    from leap_cli.io import check_settings, part_of

    assert part_of("train.shard1of10.jsonl") == (1, 10) and part_of("leap-train.shard3of12-000000.tar") == (3, 12)
    assert part_of("train.shard12of16.config.json") == (12, 16) and part_of("train.jsonl") is None
    (tmp_path / "train.shard0of4.jsonl").write_text('{"narration_id": "a"}\n')
    with pytest.raises(LeapError, match="parts of --shard i/4 are beside it"):
        check_settings(tmp_path / "train.shard1of10.jsonl", {"x": 1})


def test_resuming_a_merge_that_lacks_a_parts_records_is_refused(tmp_path):
    """A merge made before part 2/3 was done, resumed without --shard, would do that part's segments again
    (paid again at an LLM stage) without a word."""
    from leap_cli.io import check_settings, settings_path

    for i in range(3):
        part = tmp_path / f"val.shard{i}of3.jsonl"
        part.write_text("".join(json.dumps({"narration_id": f"s{i}_{k}"}) + "\n" for k in range(4)))
        settings_path(part).write_text(json.dumps({"settings": {"m": 1}}))
    merged = tmp_path / "val.jsonl"
    merged.write_text("".join((tmp_path / f"val.shard{i}of3.jsonl").read_text() for i in (0, 1)))
    with pytest.raises(LeapError, match="lacks 4 records"):
        check_settings(merged, {"m": 1})


def test_a_reader_leaves_a_writers_torn_last_line_alone(tmp_path):
    """The next stage reading an output while its writer is mid-line: only the writer's own resume cuts a torn
    line (a reader cutting it would leave the rest of the line glued on after the cut, a bad line in the middle)."""
    from leap_cli.io import iter_jsonl

    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"narration_id": "a"}\n{"narration_id": "b"}\n{"narration_id": "c", "te')
    before = path.read_bytes()
    assert [r["narration_id"] for r in read_jsonl(path)] == ["a", "b"]
    assert [r["narration_id"] for _, r in iter_jsonl(path)] == ["a", "b"]
    assert path.read_bytes() == before


def _fsync_sizes(monkeypatch) -> list[int]:
    import os

    sizes: list[int] = []
    real = os.fsync

    def spy(fd):
        sizes.append(os.fstat(fd).st_size)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return sizes


def test_records_are_fsynced_as_sync_every_says_and_at_close(tmp_path, monkeypatch):
    """sync_every=0: each record on disk before the next (a power loss takes at most the last); any other: at the
    latest on close (a clean exit leaves every record durable)."""
    path = tmp_path / "out.jsonl"
    sizes = _fsync_sizes(monkeypatch)
    with JsonlAppender(path, sync_every=0) as a:
        for k in range(3):
            a.write({"narration_id": f"n{k}"})
            assert sizes and sizes[-1] == path.stat().st_size  # this record's bytes, flushed, then fsynced
    assert len([s for s in sizes if s < path.stat().st_size]) == 2
    sizes.clear()
    with JsonlAppender(tmp_path / "slow.jsonl", sync_every=3600) as a:
        a.write({"narration_id": "n0"})
        a.write({"narration_id": "n1"})
        n_before_close = len(sizes)
    assert n_before_close <= 1 and sizes[-1] == (tmp_path / "slow.jsonl").stat().st_size


def test_an_atomic_write_fsyncs_its_bytes_not_an_empty_buffer(tmp_path, monkeypatch):
    from leap_cli.io import atomic_write_bytes

    sizes = _fsync_sizes(monkeypatch)
    atomic_write_bytes(tmp_path / "x.json", b"x" * 100)
    assert sizes[0] == 100


def _fsynced(monkeypatch, watch) -> list[tuple[str, bytes | None]]:
    """Each fsync as (what, bytes of ``watch`` then): a folder's, or a file's."""
    import os
    import stat

    seen: list[tuple[str, bytes | None]] = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        if what == "folder":
            assert st.st_ino == os.stat(watch.parent).st_ino
        seen.append((what, watch.read_bytes() if watch.exists() else None))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_a_rename_is_made_durable_by_fsyncing_its_folder_after_it(tmp_path, monkeypatch):
    """Until the folder is fsync'ed a power loss can undo the rename (the old file, or none, comes back): the
    bytes are fsync'ed first, then the folder once the new file has its name; whoever wrote the temp file."""
    import torch

    from leap_cli.io import AtomicFiles, atomic_path, atomic_write_bytes

    target = tmp_path / "sub" / "x.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    seen = _fsynced(monkeypatch, target)
    atomic_write_bytes(target, b"new")
    assert seen == [("file", b"old"), ("folder", b"new")]
    seen.clear()
    with atomic_path(target) as tmp:
        torch.save({"a": 1}, tmp)  # as the scores and the naming cache are written: no fsync of their own
    assert [w for w, _ in seen] == ["file", "folder"] and seen[0][1] == b"new" and seen[1][1] != b"new"
    seen.clear()
    before = target.read_bytes()
    with AtomicFiles(target) as files:
        tmp = files.new()
        tmp.write_bytes(b"newer")
        files.commit([target])
    assert seen == [("file", before), ("folder", b"newer")]


@pytest.mark.parametrize("code,raised", [("ENOSPC", True), ("EIO", True), ("EINVAL", False)])
def test_a_failed_fsync_of_the_bytes_keeps_the_old_file_one_that_cannot_is_passed_over(tmp_path, monkeypatch,
                                                                                       code, raised):
    """fsync's ENOSPC / EIO: the bytes may not be on disk, so the write fails and the old file stays; EINVAL (a
    file system that cannot fsync) is no failure. A folder's fsync never fails the write (the file is in place)."""
    import errno
    import os
    import stat

    from leap_cli.io import atomic_path

    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode) or not raised:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", fsync)
    if raised:
        with pytest.raises(OSError, match=str(target)):
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    else:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
        assert target.read_bytes() == b"new"


def test_files_committed_together_get_the_umasks_mode(tmp_path):
    """`--batch-file` parts: 0666 less the umask (a group's shared folder reads them), as atomic_path's files."""
    import os

    from leap_cli.io import AtomicFiles

    old = os.umask(0o002)
    try:
        with AtomicFiles(tmp_path / "batch.jsonl") as files:
            for name in ("a", "b"):
                files.new().write_text(name)
            files.commit([tmp_path / "batch-1of2.jsonl", tmp_path / "batch-2of2.jsonl"])
    finally:
        os.umask(old)
    for name in ("batch-1of2.jsonl", "batch-2of2.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-1of2.jsonl", "batch-2of2.jsonl"]


def test_the_merge_advice_names_only_the_options_a_resume_would_refuse(tmp_path):
    """Was wrong: a run without --shard beside unmerged parts was told to merge them and run again "with the parts'
    options", and those named every key that differed, also a limit a resume may raise (generate-programs'
    ``params.max_tokens``) and a key the parts' settings were written before (``adopt``): a rerun with the raised
    limit is accepted, so naming it sent the user back to the lower one for nothing."""
    from leap_cli.io import SETTINGS_SUFFIX, check_settings

    out = tmp_path / "val.jsonl"
    part = tmp_path / "val.shard0of2.jsonl"
    part.write_text('{"narration_id": "a"}\n')
    part.with_name(part.name + SETTINGS_SUFFIX).write_text(json.dumps({"k": 2, "params": {"max_tokens": 100}}))
    now = {"k": 4, "params": {"max_tokens": 200}, "descriptors": {"x": 1}}
    with pytest.raises(LeapError) as e:
        check_settings(out, now, adopt=("descriptors",), grow=("params.max_tokens",))
    assert "with the parts' options (k: 2 -> 4)" in e.value.fix, e.value.fix
    with pytest.raises(LeapError) as e:  # a lowered limit is one a resume refuses: named
        check_settings(out, {**now, "params": {"max_tokens": 50}}, adopt=("descriptors",), grow=("params.max_tokens",))
    assert "params.max_tokens: 100 -> 50" in e.value.fix, e.value.fix
