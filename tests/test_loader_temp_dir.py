"""DataLoader workers under a deep TMPDIR (a cluster's per-job folder): the Unix sockets through which a worker
passes its batch (multiprocessing's listener for "file_descriptor" sharing, torch's shared-memory manager for
"file_system") are made there, and their paths hold at most 107 bytes."""

import os
import subprocess
import sys
from pathlib import Path

from tests.test_train import shard_work  # noqa: F401  (the module's fixture: train and val shards of a tiny kitchen)

REPO = Path(__file__).resolve().parents[1]
READ = ("from leap_cli.shards.dataset import Guarded, ShardDataset, loader_workers, shard_loader\n"
        "ds = ShardDataset({folder!r}, train=False, num_frames=4, img_size=32, batch_size=2)\n"
        "w = loader_workers(2, '--workers', samples=len(ds), batch_size=2)\n"
        "print('read', sum(len(b['narration_id']) for b in Guarded(shard_loader(ds, batch_size=2, workers=w), "
        "'--workers')), 'with', w, 'workers')\n")


def test_workers_under_a_deep_tmpdir_hand_their_batches_over(shard_work, tmp_path):  # noqa: F811
    """Was wrong: under a TMPDIR whose socket paths pass 107 bytes every batch was lost ("AF_UNIX path too long",
    a line each), and the main process waited 900 s (LOADER_TIMEOUT) for them, then said to raise ulimit -n."""
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    deep.mkdir()
    folder = str(shard_work / "shards" / "train")
    env = {**os.environ, "TMPDIR": str(deep), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", READ.format(folder=folder)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "read 8 with 2 workers" in r.stdout, r.stdout + r.stderr[-2000:]
    said = " ".join(r.stderr.split())
    assert f"TMPDIR {deep} is too deep for the sockets DataLoader workers pass batches through" in said, said
    assert "could not hand a batch over" not in said, said


def test_a_short_tmpdir_is_left_as_it_is(shard_work, tmp_path, monkeypatch):  # noqa: F811
    import tempfile

    from leap_cli.shards.dataset import SOCKET_PATH_BYTES, short_temp_dir_for_workers, socket_path_bytes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert socket_path_bytes() <= SOCKET_PATH_BYTES
    short_temp_dir_for_workers(2)
    assert tempfile.tempdir == str(tmp_path)
    deep = tmp_path / ("d" * 100)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    monkeypatch.setenv("TMPDIR", str(deep))
    short_temp_dir_for_workers(0)  # (no workers: no socket)
    assert tempfile.tempdir == str(deep)
