"""Backbones, weights, the training loop, resume after a kill, DDP, and the model folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from medadapt.engine import ComponentKind, InvalidInputError, Split
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.data.splits import check_patient_splits, split_by_patient
from medadapt.engine.models.model import WEIGHTS, build_classifier, load_model
from medadapt.engine.models.runfolder import LOCK
from medadapt.engine.models.weights import hub_cache_file, load_imagenet_weights, load_weights_file
from medadapt.engine.profile import ProfileError, load_profile
from medadapt.engine.training.checkpoints import CHECKPOINT
from medadapt.engine.training.job import train

QUICK = {
    "site": {"name": "Quick Hospital"},
    "intended_use": "tests",
    "body_region": "chest",
    "seed": 3,
    "task": {
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
        "label_depends_on": ["shape", "texture", "absolute-hu"],
    },
    "data": {
        "source": "phantom",
        "params": {"patients": 24, "seed": 3, "slices": 12, "size": 96},
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
    },
    "preprocessing": {
        "window": {"level": -600, "width": 1500},
        "spacing_mm": [2.0, 1.0, 1.0],
        "patch_mode": "2d",
        "patch_size": [24, 24],
    },
    "backbone": {"name": "small-cnn"},
    "training": {"epochs": 3, "batch_size": 8, "early_stopping_patience": None},
    "acceptance": {"min_auroc": 0.8},
}


@pytest.fixture
def quick_profile(tmp_path, monkeypatch):
    """A small phantom profile; the cache lives in the test's folder."""
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))

    def _write(**changes):
        data = json.loads(json.dumps(QUICK))
        for dotted, value in changes.items():
            target = data
            *path, last = dotted.split("__")
            for key in path:
                target = target[key]
            target[last] = value
        path = tmp_path / "quick.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return _write


def run_train(profile_path: Path, out: Path):
    host = get_plugin_host()
    registry = host.registry()
    return train(load_profile(profile_path, registry), registry, host, out, quiet=True)


# --- backbones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "shape"),
    [
        ("small-cnn", "2d", (2, 1, 32, 32)),
        ("small-cnn", "3d", (2, 1, 8, 32, 32)),
        ("resnet18", "2.5d", (2, 3, 32, 32)),
        ("resnet50", "2d", (2, 1, 32, 32)),
        ("densenet121", "2d", (2, 1, 32, 32)),
        ("densenet121", "3d", (2, 1, 32, 32, 32)),
    ],
)
def test_backbones_classify_patches_of_their_dimensions(name, mode, shape):
    backbone = get_plugin_host().registry().create(ComponentKind.BACKBONES, name)
    model = build_classifier(backbone, mode, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (2, 2)
    assert set(backbone.stages(model.features)) == set(backbone.stage_names)


def test_imagenet_weights_are_read_from_the_hub_cache_and_adapted_to_one_channel(
    tmp_path, monkeypatch
):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone = get_plugin_host().registry().create(ComponentKind.BACKBONES, "resnet18")
    cached = hub_cache_file(backbone.imagenet_url)
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, cached)
    model = build_classifier(
        backbone, "2d", 2, load_imagenet_weights("resnet18", backbone.imagenet_url)
    )
    stem = model.features.stem[0].weight
    assert stem.shape == (64, 1, 7, 7)
    torch.testing.assert_close(stem, reference["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.features.stage4[1].conv2.weight, reference["layer4.1.conv2.weight"]
    )


def test_missing_imagenet_weights_say_which_file_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    backbone = get_plugin_host().registry().create(ComponentKind.BACKBONES, "resnet18")
    with pytest.raises(InvalidInputError) as caught:
        load_imagenet_weights("resnet18", backbone.imagenet_url)
    message = str(caught.value)
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"{expected} is missing" in message
    assert "never downloads" in message
    assert "torch.hub.load_state_dict_from_url('https://download.pytorch.org" in message
    assert "weights: none" in message


class NotWeights:
    """Anything pickled that is not a tensor: loading it could run code."""


def test_a_pickled_file_that_is_not_weights_only_is_refused(tmp_path):
    evil = tmp_path / "model.pt"
    torch.save({"conv.weight": torch.zeros(1), "extra": NotWeights()}, evil)
    with pytest.raises(InvalidInputError) as refused:
        load_weights_file(evil)
    message = str(refused.value)
    # In medadapt's words: what the file holds, and what to do; none of PyTorch's advice to
    # load it anyway, nor its terminal colour codes.
    assert re.search(r"refused: it holds pickled Python objects \([\w.]*NotWeights\)", message)
    assert "safetensors.torch.save_file(model.state_dict()" in message
    assert "\x1b" not in message
    assert "weights_only" not in message
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 1)), whole)
    with pytest.raises(InvalidInputError, match=r"torch\.nn\.modules"):
        load_weights_file(whole)
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.ones(2)}, plain)
    assert load_weights_file(plain)["conv.weight"].tolist() == [1.0, 1.0]
    other = tmp_path / "weights.pkl"
    other.write_bytes(b"\x80\x04N.")
    with pytest.raises(InvalidInputError, match=r"unknown weights format '\.pkl'"):
        load_weights_file(other)


def test_a_training_with_a_pickled_weights_file_fails_before_training(quick_profile, tmp_path):
    evil = tmp_path / "weights.pt"
    torch.save({"extra": NotWeights()}, evil)
    profile = quick_profile(backbone={"name": "small-cnn", "weights": str(evil)})
    with pytest.raises(InvalidInputError, match="refused"):
        run_train(profile, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_profile_check_refuses_unknown_stages_and_missing_imagenet(quick_profile):
    registry = get_plugin_host().registry()
    frozen = quick_profile(training={"freeze": ["stem", "stage9"]})
    with pytest.raises(
        ProfileError, match="'stage9', which the backbone 'small-cnn' does not have"
    ):
        load_profile(frozen, registry)
    dense = quick_profile(backbone={"name": "densenet121", "weights": "imagenet"})
    with pytest.raises(ProfileError, match="needs patches of at least 32 voxels"):
        load_profile(dense, registry)
    big = quick_profile(
        backbone={"name": "densenet121", "weights": "imagenet"},
        preprocessing={**QUICK["preprocessing"], "patch_size": [32, 32]},
    )
    with pytest.raises(ProfileError, match="'densenet121' has no ImageNet weights"):
        load_profile(big, registry)


# --- splits ----------------------------------------------------------------------------------


def test_splits_are_by_patient_and_keep_positive_patients_in_every_split():
    from medadapt.engine import SampleRecord
    from medadapt.engine.profile import SplitFractions

    records = [
        SampleRecord(f"p{i}", "s", "", label="malignant" if i % 3 == 0 else "benign")
        for i in range(60)
        for _ in range(2)
    ]
    fractions = SplitFractions(train=0.6, validation=0.2, test=0.2)
    split = split_by_patient(records, fractions, seed=1, positive_class="malignant")
    check_patient_splits(split)
    for name in ("train", "validation", "test"):
        in_split = [r for r in split if r.split.value == name]
        assert any(r.label == "malignant" for r in in_split)
    assert split == split_by_patient(records, fractions, seed=1, positive_class="malignant")
    first, second = split[0], split[1]
    assert first.patient_key == second.patient_key
    other = next(s for s in Split if s is not first.split)
    with pytest.raises(InvalidInputError, match="splits must be by patient"):
        check_patient_splits([first, dataclasses.replace(second, split=other)])


# --- the loop --------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_writes_a_model_folder_whose_card_matches_its_weights(quick_profile, tmp_path):
    result = run_train(quick_profile(), tmp_path / "run")
    card = json.loads((result.model_dir / "card.json").read_text())
    assert card["classes"] == ["benign", "malignant"]
    assert card["backbone"]["name"] == "small-cnn"
    assert card["seed"] == 3
    assert len(card["profile_sha256"]) == 64
    assert len(card["data_manifest_sha256"]) == 64
    assert card["versions"]["plugins"]["backbones"]
    assert 1 <= card["best_epoch"] <= 3
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(run["history"]) == 3
    loaded = load_model(result.model_dir, get_plugin_host().registry())
    assert loaded.card.as_json() == card
    weights = result.model_dir / WEIGHTS
    tampered = load_file(str(weights))
    tampered["head.bias"] += 1
    from safetensors.torch import save_file

    save_file(tampered, str(weights))
    with pytest.raises(InvalidInputError, match="do not match their card"):
        load_model(result.model_dir, get_plugin_host().registry())


@pytest.mark.slow
def test_a_label_budget_trains_on_that_many_labels_per_class(quick_profile, tmp_path):
    result = run_train(quick_profile(training__labels_per_class=2), tmp_path / "run")
    everything = run_train(quick_profile(), tmp_path / "all").counts
    assert result.counts["train"] == {"benign": 2, "malignant": 2}
    assert result.counts["validation"] == everything["validation"]
    assert sum(everything["train"].values()) > 4


@pytest.mark.slow
def test_frozen_stages_keep_their_weights(quick_profile, tmp_path):
    result = run_train(quick_profile(training={"epochs": 1, "freeze": ["stem"]}), tmp_path / "r")
    trained = load_file(str(result.model_dir / WEIGHTS))
    backbone = get_plugin_host().registry().create(ComponentKind.BACKBONES, "small-cnn")
    torch.manual_seed(3)
    initial = build_classifier(backbone, "2d", 2).state_dict()
    torch.testing.assert_close(trained["features.stem.0.weight"], initial["features.stem.0.weight"])
    torch.testing.assert_close(
        trained["features.stem.1.running_mean"], initial["features.stem.1.running_mean"]
    )
    assert not torch.equal(trained["features.stage1.0.weight"], initial["features.stage1.0.weight"])


@pytest.mark.slow
def test_training_saves_recomputed_batch_norm_statistics(quick_profile, tmp_path):
    # The saved statistics come from one pass over an epoch's training batches with the
    # weights fixed (engine/training/batchnorm.py), not from running averages over every step.
    result = run_train(quick_profile(), tmp_path / "on")
    run = json.loads((tmp_path / "on" / "run.json").read_text())
    steps = -(-sum(run["samples"]["train"].values()) // 8)
    saved = load_file(str(result.model_dir / WEIGHTS))
    counts = {int(v) for k, v in saved.items() if k.endswith("num_batches_tracked")}
    assert counts == {steps}
    off = run_train(
        quick_profile(training={**QUICK["training"], "batch_norm_batches": 0}), tmp_path / "off"
    )
    saved = load_file(str(off.model_dir / WEIGHTS))
    counts = {int(v) for k, v in saved.items() if k.endswith("num_batches_tracked")}
    assert counts == {
        steps * load_model(off.model_dir, get_plugin_host().registry()).card.best_epoch
    }


@pytest.mark.slow
def test_a_finished_model_is_not_trained_over_without_overwrite(quick_profile, tmp_path):
    profile = quick_profile(training={"epochs": 1})
    first = run_train(profile, tmp_path / "run")
    weights = (first.model_dir / WEIGHTS).read_bytes()
    with pytest.raises(InvalidInputError, match="already holds the model this profile trained"):
        run_train(profile, tmp_path / "run")
    assert (first.model_dir / WEIGHTS).read_bytes() == weights
    host = get_plugin_host()
    registry = host.registry()
    again = train(load_profile(profile, registry), registry, host, tmp_path / "run", overwrite=True)
    assert again.model_dir == first.model_dir


@pytest.mark.slow
def test_training_says_from_its_first_epoch_how_long_the_rest_will_take(
    quick_profile, tmp_path, caplog
):
    host = get_plugin_host()
    registry = host.registry()
    profile = load_profile(quick_profile(), registry)
    with caplog.at_level(logging.INFO, logger="medadapt"):
        train(profile, registry, host, tmp_path / "run", quiet=False)
    said = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    # After the first epoch of three (then once a minute at most: these epochs are short).
    assert len(said) == 1, said
    assert re.fullmatch(r"epoch 1 of 3 took \d+ s; about .+ left", said[0]), said


@pytest.mark.slow
def test_an_interrupted_run_continues_only_with_resume(quick_profile, tmp_path):
    profile = quick_profile(training={"epochs": 1})
    shutil.rmtree(run_train(profile, tmp_path / "run").model_dir)  # as if stopped before the end
    with pytest.raises(InvalidInputError, match="already holds a run; add --resume"):
        run_train(profile, tmp_path / "run")


@pytest.mark.slow
def test_refuses_to_resume_a_run_with_a_profile_of_another_seed(quick_profile, tmp_path):
    shutil.rmtree(run_train(quick_profile(training={"epochs": 1}), tmp_path / "run").model_dir)
    host = get_plugin_host()
    registry = host.registry()
    other = load_profile(quick_profile(training={"epochs": 1}, seed=4), registry)
    with pytest.raises(InvalidInputError, match="seed: 3 then, 4 now"):
        train(other, registry, host, tmp_path / "run", resume=True)


@pytest.mark.slow
def test_a_model_whose_checkpoint_was_removed_is_not_retrained_by_another_profile(
    quick_profile, tmp_path
):
    first = run_train(quick_profile(training={"epochs": 1}), tmp_path / "run")
    (tmp_path / "run" / CHECKPOINT).unlink()
    weights = (first.model_dir / WEIGHTS).read_bytes()
    with pytest.raises(InvalidInputError, match=r"was made by `train`.*What differs: profile"):
        run_train(quick_profile(training={"epochs": 2}), tmp_path / "run")
    assert (first.model_dir / WEIGHTS).read_bytes() == weights


def test_an_output_that_cannot_be_written_is_refused_before_the_scan(
    quick_profile, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "medadapt.engine.training.job.open_site_data",
        lambda *a, **k: pytest.fail("the data were scanned before the folder was checked"),
    )
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    result = CliRunner().invoke(cli, ["train", "-p", str(quick_profile()), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{out}: cannot create the output folder" in result.output


HOLDER = """
import os, time
from pathlib import Path
from medadapt.engine import hookimpl

@hookimpl
def medadapt_epoch_end(run, epoch, metrics):
    gate = os.environ.get("HOLD_UNTIL")
    if gate:
        Path(gate + ".held").touch()  # tells the test the job is inside its run
    deadline = time.monotonic() + 300
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


@pytest.mark.slow
def test_a_second_train_on_one_folder_is_refused_while_the_first_runs(
    quick_profile, tmp_path, install_distribution
):
    site = install_distribution(
        "thirdparty-holder", {"holder": "thirdparty_holder"}, {"thirdparty_holder": HOLDER}
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    profile = quick_profile(training={"epochs": 2, "early_stopping_patience": None})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "medadapt.engine", "train", "-p", str(profile)]
    first = subprocess.Popen(  # holds its folder at the end of its first epoch
        [*command, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "HOLD_UNTIL": str(tmp_path / "never")},
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "never.held").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first job never finished an epoch"
            time.sleep(0.1)
        second = subprocess.run(
            [*command, "--out", str(out)], capture_output=True, text=True, timeout=120, env=env
        )
        assert second.returncode == 2, second.stderr
        assert f"is in use by another job: `train` in process {first.pid}" in second.stderr
        assert f"(command `medadapt train -p {profile} --out {out}`)" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    assert not (out / LOCK).exists()
    assert not (out / "model").exists()


KILLER = """
import os, signal
from medadapt.engine import hookimpl

@hookimpl
def medadapt_epoch_end(run, epoch, metrics):
    if str(epoch) == os.environ.get("KILL_AT_EPOCH"):
        os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_WITH", "SIGKILL")))
"""


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_weights(
    quick_profile, tmp_path, install_distribution, run_medadapt
):
    site = install_distribution(
        "thirdparty-killer", {"killer": "thirdparty_killer"}, {"thirdparty_killer": KILLER}
    )
    profile = quick_profile(
        training={"epochs": 4, "batch_size": 8, "early_stopping_patience": None}
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    killed = run_medadapt(
        "train", "-p", str(profile), "--out", str(tmp_path / "a"), env={**env, "KILL_AT_EPOCH": "2"}
    )
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "a" / "model").exists()
    resumed = run_medadapt(
        "train", "-p", str(profile), "--out", str(tmp_path / "a"), "--resume", env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    straight = run_medadapt("train", "-p", str(profile), "--out", str(tmp_path / "b"), env=env)
    assert straight.returncode == 0, straight.stderr
    a = load_file(str(tmp_path / "a" / "model" / WEIGHTS))
    b = load_file(str(tmp_path / "b" / "model" / WEIGHTS))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history_a = json.loads((tmp_path / "a" / "run.json").read_text())["history"]
    history_b = json.loads((tmp_path / "b" / "run.json").read_text())["history"]
    timing = {"seconds", "train_seconds"}
    assert all(epoch["seconds"] >= epoch["train_seconds"] > 0 for epoch in history_a)
    assert [{k: v for k, v in e.items() if k not in timing} for e in history_a] == [
        {k: v for k, v in e.items() if k not in timing} for e in history_b
    ]


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_keeping_finished_work_and_no_temporary_files(
    quick_profile, tmp_path, install_distribution, run_medadapt
):
    site = install_distribution(
        "thirdparty-killer", {"killer": "thirdparty_killer"}, {"thirdparty_killer": KILLER}
    )
    profile = quick_profile(training={"epochs": 3, "early_stopping_patience": None})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "a"
    stopped = run_medadapt(
        "train",
        "-p",
        str(profile),
        "--out",
        str(out),
        env={**env, "KILL_AT_EPOCH": "2", "KILL_WITH": "SIGTERM"},
    )
    assert stopped.returncode == 143, stopped.stderr
    assert "terminated (SIGTERM); finished work is kept" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert (out / CHECKPOINT).is_file()
    assert not (out / LOCK).exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    resumed = run_medadapt("train", "-p", str(profile), "--out", str(out), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model" / WEIGHTS).is_file()


def test_leaving_the_world_destroys_the_group_even_when_ddp_sits_in_a_reference_cycle(tmp_path):
    # The trainer and its DDP wrapper sat in a reference cycle, so destroy_process_group only
    # dropped the registry's reference: the gloo group, its threads and its connections lived
    # on until the interpreter shut down, where a rank could abort ("terminate called without
    # an active exception"). leave_world must leave no group and no gloo thread behind.
    import threading
    import weakref

    import torch.distributed as dist

    from medadapt.engine.training.distributed import leave_world

    def native_threads() -> int:
        return len(os.listdir("/proc/self/task")) - threading.active_count()

    before = native_threads()
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp(torch.randn(8, 4)).sum().backward()
    holder: dict = {"ddp": ddp}
    holder["self"] = holder  # a cycle, as the trainer and its objective make
    gone = weakref.ref(ddp)
    del ddp, model, holder
    assert native_threads() > before  # gloo's threads, while the group lives
    leave_world()
    assert not dist.is_initialized()
    assert gone() is None
    assert native_threads() <= before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes(quick_profile, tmp_path):
    profile = quick_profile(training={"epochs": 2, "batch_size": 8, "device": "cpu"})
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "--master_addr=127.0.0.1",
            "-m",
            "medadapt.engine",
            "--quiet",
            "train",
            "-p",
            str(profile),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # The faulthandler prints every thread's stack if a rank aborts: under CPU load a rank
        # has aborted now and then with "terminate called without an active exception".
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert len(run["history"]) == 2
    card = json.loads((out / "model" / "card.json").read_text())
    assert card["world_size"] == 2
    assert np.isfinite(run["history"][-1]["val_loss"])
    assert load_model(out / "model", get_plugin_host().registry()).card.classes == [
        "benign",
        "malignant",
    ]


def test_imagenet_addresses_are_torchvisions():
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    from medadapt.plugins.backbones import ResNet18, ResNet50

    assert ResNet18.imagenet_url == ResNet18_Weights.IMAGENET1K_V1.url
    assert ResNet50.imagenet_url == ResNet50_Weights.IMAGENET1K_V2.url


@pytest.mark.slow
def test_a_checkpoint_holding_pickled_objects_is_refused_on_resume(quick_profile, tmp_path):
    profile = quick_profile(training={"epochs": 2})
    run_train(profile, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["smuggled"] = NotWeights()
    torch.save(payload, checkpoint)
    host = get_plugin_host()
    registry = host.registry()
    with pytest.raises(InvalidInputError, match="the checkpoint cannot be read"):
        train(
            load_profile(profile, registry),
            registry,
            host,
            tmp_path / "run",
            resume=True,
            quiet=True,
        )


@pytest.mark.slow
def test_data_loader_worker_processes_give_the_same_model(quick_profile, tmp_path):
    alone = run_train(quick_profile(training={"epochs": 1}), tmp_path / "alone")
    workers = run_train(quick_profile(training={"epochs": 1, "workers": 2}), tmp_path / "workers")
    a = load_file(str(alone.model_dir / WEIGHTS))
    b = load_file(str(workers.model_dir / WEIGHTS))
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("size", [20, 64, 70, 123])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("replicas", [1, 2])
def test_an_epochs_training_batches_are_the_steps_it_counts(size, drop, replicas):
    # The adaptation run's warm-up counts steps_per_epoch; the loader must make that many.
    from types import SimpleNamespace

    from medadapt.engine.training import loop

    trainer = SimpleNamespace(
        seed=1,
        world=SimpleNamespace(distributed=replicas > 1, size=replicas, rank=replicas - 1),
        training=SimpleNamespace(batch_size=32, workers=0),
        on_gpu=False,
        drop_incomplete=drop,
    )
    data = list(range(size))
    training = loop.Trainer._loader(trainer, data, 1, shuffle=True)
    assert len(list(training)) == loop.steps_per_epoch(size, 32, drop, replicas)
    validation = loop.Trainer._loader(trainer, data, 0, shuffle=False, distributed=False)
    assert sum(len(batch) for batch in validation) == size  # validation sees every sample
    if replicas == 1 and not drop:
        assert sum(len(batch) for batch in training) == size  # every sample, every epoch
