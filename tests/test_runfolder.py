"""A job's claim on its folder: provenance, the lock, --overwrite, writability, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.models.runfolder import (
    LOCK,
    PROVENANCE,
    FolderInUseError,
    Provenance,
    claim_folder,
)

TRAIN = Provenance("train", {"profile": "a" * 64}, {"seed": 7}, {"site": "'Hospital A'"})


def claim(folder: Path, provenance: Provenance = TRAIN, **options):
    with claim_folder(folder, provenance, **options) as claimed:
        (folder / "run.json").write_text("{}")
        return claimed


def test_a_new_folder_is_claimed_and_its_provenance_recorded(tmp_path):
    claimed = claim(tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / PROVENANCE).read_text())
    assert recorded["job"] == "train"
    assert recorded["inputs"] == {"profile": "a" * 64}
    assert recorded["settings"] == {"seed": 7}
    assert recorded["command"] == "the Python API"  # not the test runner's command line
    assert not claimed.existed
    assert not claimed.fresh
    assert not (tmp_path / "run" / LOCK).exists()  # released


def test_the_same_job_with_the_same_inputs_finds_its_earlier_run(tmp_path):
    claim(tmp_path / "run")
    assert claim(tmp_path / "run").existed


def test_refuses_a_folder_made_by_another_job_naming_both(tmp_path):
    claim(tmp_path / "run")
    adapt = Provenance("adapt", {"profile": "b" * 64}, {"method": "coral"})
    with pytest.raises(InvalidInputError) as refused:
        claim(tmp_path / "run", adapt)
    text = str(refused.value)
    assert "made by `train` (site 'Hospital A', seed 7)" in text
    assert "this is `adapt`" in text
    assert "--overwrite" in text


def test_refuses_to_resume_with_other_inputs_saying_what_differs(tmp_path):
    claim(tmp_path / "run")
    other_seed = Provenance("train", {"profile": "c" * 64}, {"seed": 8})
    with pytest.raises(InvalidInputError, match="seed: 7 then, 8 now") as refused:
        claim(tmp_path / "run", other_seed)
    assert "profile: aaaaaaaaaaaa... then, cccccccccccc... now" in str(refused.value)


def test_overwrite_starts_afresh_over_another_run(tmp_path):
    claim(tmp_path / "run")
    other = Provenance("train", {"profile": "c" * 64}, {"seed": 8})
    claimed = claim(tmp_path / "run", other, overwrite=True)
    assert claimed.fresh
    assert not claimed.existed
    assert json.loads((tmp_path / "run" / PROVENANCE).read_text())["settings"] == {"seed": 8}


def test_refuses_a_full_folder_medadapt_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("years of work")
    with pytest.raises(InvalidInputError, match=r"not empty \(thesis.docx\) and has no"):
        claim(tmp_path / "mine")
    assert not (tmp_path / "mine" / PROVENANCE).exists()


def test_a_folder_left_by_a_job_that_stopped_before_writing_is_free(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError), claim_folder(folder, TRAIN):
        raise RuntimeError("bad input found after the claim")
    assert claim(folder, Provenance("train", {"profile": "fixed"}, {"seed": 7})).existed is False


def test_refuses_to_write_over_its_own_input(tmp_path):
    model = tmp_path / "a-train" / "model"
    model.mkdir(parents=True)
    with pytest.raises(InvalidInputError, match=r"holds this job's own input .*model"):
        claim(tmp_path / "a-train", reads=[model])
    assert not (tmp_path / "a-train" / PROVENANCE).exists()
    claim(tmp_path / "elsewhere", reads=[model])  # reading from elsewhere is fine


def test_refuses_an_output_that_cannot_be_a_folder_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match="cannot create the output folder"):
        claim(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_refuses_a_read_only_folder_before_any_work(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InvalidInputError, match="not writable"):
            claim(folder)
    finally:
        folder.chmod(0o755)


HOLDER = """
import sys, time
from pathlib import Path
from medadapt.engine.models.runfolder import Provenance, claim_folder
with claim_folder(Path(sys.argv[1]), Provenance("train", {"profile": "a" * 64}, {"seed": 7})):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(folder: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_job_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = hold(tmp_path / "run", 60)
    try:
        with pytest.raises(FolderInUseError) as refused:
            claim(tmp_path / "run")
        assert f"in process {holder.pid} on {socket.gethostname()}" in str(refused.value)
        assert refused.value.exit_code == 2
    finally:
        holder.kill()
        holder.wait()


def test_waits_for_a_holder_that_finishes(tmp_path):
    holder = hold(tmp_path / "run", 1)
    claim(tmp_path / "run", wait=30)
    assert holder.wait() == 0


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    holder = hold(tmp_path / "run", 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK).exists()  # left behind
    with caplog.at_level("WARNING"):
        claim(tmp_path / "run")
    assert "stale lock" in caplog.text
    assert "no longer runs" in caplog.text


def test_a_lock_of_a_reused_process_id_is_stale(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = {
        "host": socket.gethostname(),
        "pid": os.getpid(),  # alive, but started at another time than the recorded one
        "process_started": 1,
        "job": "train",
        "command": "medadapt train",
        "since": "2026-01-01T00:00:00+00:00",
    }
    (folder / LOCK).write_text(json.dumps(lock))
    claim(folder)


def test_a_lock_held_on_another_machine_is_obeyed_until_it_is_no_longer_refreshed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = {"host": "another-machine", "pid": 1, "job": "adapt", "command": "medadapt adapt"}
    (folder / LOCK).write_text(json.dumps(lock))
    with pytest.raises(FolderInUseError, match="on another-machine"):
        claim(folder)
    long_ago = time.time() - 3600
    os.utime(folder / LOCK, (long_ago, long_ago))
    claim(folder)
