"""No patient identity anywhere: canary strings in every identifying DICOM attribute.

Two simulated hospitals are written as DICOM, then every identifying attribute of every file
is replaced by a unique canary (the labels file follows, as a hospital's would; Hospital A's
lesions come from DICOM SEG files, which carry the canaries too). The whole workflow runs on
them: inspect, train, adapt, shift, validate, and the exports (ONNX, a MONAI bundle with the
report's figures). Then every file the commands wrote (reports, JSON, CSV, logs, caches,
model cards, checkpoints, weights, exports) and everything they printed is searched for the
canaries. None may appear.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pydicom
import pytest
import yaml
from click.testing import CliRunner

from medadapt.engine.cli import cli, configure_logging
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital

pytestmark = pytest.mark.slow

#: Digits of a medical record number that a hospital's UID generator embedded in its UIDs.
MRN_DIGITS = "904177230118"


def canaries(site: str, index: int) -> dict[str, str]:
    """The identifying attributes of patient ``index`` at ``site``: each a unique canary."""
    return {
        "PatientName": f"CANARY^NAME{site}{index}",
        "PatientID": f"CANARY-PID-{site}{index}",
        "PatientBirthDate": "18870214",
        "AccessionNumber": f"CANARYACC{site}{index}",
        "InstitutionName": "CANARY INSTITUTION",
        "ReferringPhysicianName": "CANARY^REFERRER",
        "StudyID": f"CNRYSTUDY{site}{index}",
        "OtherPatientIDs": f"CANARY-OTHER-{site}{index}",
    }


#: What must never appear in anything written: the canaries above, and the MRN in the UIDs.
FORBIDDEN = ["CANARY", "CNRYSTUDY", "18870214", "1887-02-14", MRN_DIGITS]


def canary_hospital(root: Path, site: str, segmentations: bool = False, **params: object) -> Path:
    folder = root / site
    spec = HospitalSpec.model_validate({"patients": 14, "slices": 12, "size": 96, **params})
    write_hospital(spec, folder, segmentations=segmentations)
    new_ids: dict[str, tuple[str, str]] = {}
    for index, series in enumerate(sorted((folder / "dicom").iterdir())):
        uid_root = f"1.2.826.0.1.3680043.10.{MRN_DIGITS}{index}"
        new_sop: dict[str, str] = {}
        for number, path in enumerate(sorted(series.glob("*.dcm"))):
            ds = pydicom.dcmread(path)
            old = (ds.PatientID, ds.SeriesInstanceUID)
            for keyword, value in canaries(site, index).items():
                setattr(ds, keyword, value)
            ds.StudyInstanceUID = f"{uid_root}.1"
            ds.SeriesInstanceUID = f"{uid_root}.2"
            new_sop[ds.SOPInstanceUID] = f"{uid_root}.3.{number + 1}"
            ds.SOPInstanceUID = new_sop[ds.SOPInstanceUID]
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(path, enforce_file_format=True)
            new_ids[old[0]] = (ds.PatientID, ds.SeriesInstanceUID)
        for path in series.glob("SEG/*.dcm"):  # the radiologist's SEG, drawn on that series
            ds = pydicom.dcmread(path)
            for keyword, value in canaries(site, index).items():
                setattr(ds, keyword, value)
            ds.StudyInstanceUID = f"{uid_root}.1"
            referenced = ds.ReferencedSeriesSequence[0]
            referenced.SeriesInstanceUID = f"{uid_root}.2"
            for item in referenced.ReferencedInstanceSequence:
                item.ReferencedSOPInstanceUID = new_sop[item.ReferencedSOPInstanceUID]
            for frame in ds.PerFrameFunctionalGroupsSequence:
                for derivation in frame.get("DerivationImageSequence", []):
                    for source in derivation.SourceImageSequence:
                        source.ReferencedSOPInstanceUID = new_sop[source.ReferencedSOPInstanceUID]
            ds.SOPInstanceUID = f"{uid_root}.4.1"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(path, enforce_file_format=True)
    # An export laid out by patient, as many are: each series folder is named by the
    # patient's name and ID (the phantom's own folders are named by case number).
    for index, series in enumerate(sorted((folder / "dicom").iterdir())):
        names = canaries(site, index)
        series.rename(series.with_name(f"{names['PatientName']} {names['PatientID']}"))
    labels = folder / "labels.csv"
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        patient, series = new_ids[row["patient_id"]]
        row["lesion_id"] = row["lesion_id"].replace(row["patient_id"], patient)
        row["patient_id"], row["series_uid"] = patient, series
    # A row for a patient that is not in the export: reported, without its identifier.
    rows.append({**rows[0], "patient_id": f"CANARY-PID-{site}-MISSING", "series_uid": ""})
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def profile(root: Path, name: str, folder: Path, from_seg: bool = False) -> Path:
    document = {
        "site": {"name": name},
        "intended_use": "PHI test",
        "body_region": "chest",
        "seed": 2,
        "task": {
            "classes": ["benign", "malignant"],
            "positive_class": "malignant",
            "label_depends_on": ["shape", "texture", "absolute-hu"],
        },
        "data": {
            "source": "dicom-ct",
            "params": {"root": str(folder / "dicom")},
            "label_file": str(folder / "labels.csv"),
            "split": {"train": 0.4, "validation": 0.3, "test": 0.3},
        },
        "preprocessing": {
            "window": {"level": 40, "width": 400},
            "spacing_mm": [2.0, 1.0, 1.0],
            "patch_mode": "2d",
            "patch_size": [24, 24],
        },
        "augmentations": [{"name": "random-flip", "params": {"axis": "left-right"}}],
        "backbone": {"name": "small-cnn"},
        "training": {"epochs": 2, "batch_size": 8, "early_stopping_patience": None},
        "adaptation": {"method": "adabn"},
        "acceptance": {"min_auroc": 0.5, "min_test_patients": 1},
    }
    if from_seg:  # the lesions come from the SEG files the radiologist saved
        del document["data"]["label_file"]
        document["data"]["params"]["lesions_from_seg"] = True
    path = root / f"{name.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_no_identifying_attribute_reaches_anything_written(tmp_path, monkeypatch):
    inputs, work = tmp_path / "inputs", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(work / "cache"))
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "a-site-secret-for-this-test-only")
    a = canary_hospital(inputs, "A", segmentations=True, seed=31)
    b = canary_hospital(inputs, "B", seed=32, scanner="ge-sharp-low-dose")
    # The canaries are really in the inputs (the test would prove nothing otherwise).
    first = next((b / "dicom").rglob("*.dcm"))
    ds = pydicom.dcmread(first)
    assert str(ds.PatientName).startswith("CANARY")
    assert MRN_DIGITS in ds.SeriesInstanceUID
    seg = next((a / "dicom").rglob("SEG/*.dcm"))
    assert str(pydicom.dcmread(seg).PatientName).startswith("CANARY")
    source = profile(work, "Hospital A", a, from_seg=True)
    target = profile(work, "Hospital B", b)
    # A file that is not DICOM in a patient's folder: every job that reads B rejects it,
    # naming it in its log; the batch's job.log keeps that log.
    patient_folder = next((b / "dicom").iterdir())
    assert patient_folder.name.startswith("CANARY^NAME")
    (patient_folder / "broken.dcm").write_bytes(b"not DICOM at all")
    # A site whose data folder does not exist (a patient's folder, misspelt): its job fails,
    # and its reason, kept in batch.json, names that folder.
    missing = yaml.safe_load(target.read_text())
    missing["site"]["name"] = "Hospital C"
    missing["data"]["params"]["root"] = str(b / "dicom" / "CANARY^NAMEB99 CANARY-PID-B99")
    (inputs / "Hospital-C.yaml").write_text(yaml.safe_dump(missing))
    jobs = work / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({
        "defaults": {"from": str(work / "train" / "model"), "method": "adabn"},
        "jobs": [{"profile": str(target)}, {"profile": str(inputs / "Hospital-C.yaml")}],
    }))  # fmt: skip
    commands = [
        ["inspect", str(a / "dicom")],
        ["inspect", str(b / "dicom"), "--json"],
        ["profile", "check", str(source), str(target)],
        ["train", "-p", str(source), "--out", str(work / "train")],
        ["adapt", "-p", str(target), "--from", str(work / "train" / "model"),
         "--out", str(work / "adapt")],
        ["shift", "-p", str(target), "--against", str(source), "--model",
         str(work / "train" / "model"), "--out", str(work / "shift")],
        ["validate", "-p", str(target), "--model", str(work / "adapt" / "model"),
         "--baseline", str(work / "train" / "model"), "--shift",
         str(work / "shift" / "shift.json"), "--out", str(work / "validate")],
        ["model", "export", str(work / "adapt" / "model"), "--format", "onnx",
         "--out", str(work / "model.onnx")],
        ["model", "export", str(work / "adapt" / "model"), "--format", "monai-bundle",
         "--out", str(work / "bundle"), "--report", str(work / "validate")],
        ["batch", str(jobs), "--workers", "1", "--out", str(work / "batch")],
    ]  # fmt: skip
    get_plugin_host().add_commands(cli)
    configure_logging(quiet=False)  # as the console script does: logs are searched too
    printed = []
    for command in commands:
        result = CliRunner().invoke(cli, command)
        # Ran to the end (the batch: with one job failed, as it should).
        assert result.exit_code in (0, 1, 5, 6), result.output[-3000:]
        printed.append(result.output)
    assert (work / "validate" / "report.html").is_file()
    assert (work / "model.onnx").is_file()
    assert (work / "bundle" / "configs" / "metadata.json").is_file()
    trained = json.loads((work / "train" / "model" / "card.json").read_text())
    assert trained["history"], "Hospital A trained on the lesions of its SEG files"
    data = json.loads((work / "validate" / "report.json").read_text())["data"]
    assert data["unmatched_label_rows"] == 1  # reported by reason, without the identifier
    assert data["rejected_inputs"] == {
        "label row: no usable series for patient with the given study/series": 1,
        "not a DICOM file": 1,
    }
    assert any((work / "cache").rglob("*")), "the cache was written and is searched"
    batch = json.loads((work / "batch" / "batch.json").read_text())
    assert [job["status"] for job in batch["jobs"]] == ["finished", "failed"]
    assert "<data>" in batch["jobs"][1]["reason"], batch["jobs"][1]["reason"]
    logs = "".join(p.read_text() for p in (work / "batch").rglob("job.log"))
    assert "<data>/path-" in logs  # the broken file is named, by pseudonym ...
    assert "broken.dcm" not in logs  # ... only
    assert "label" in "".join(printed)  # the unmatched label row is reported ...
    leaks = []
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        content = path.read_bytes()
        leaks += [f"{path.relative_to(work)}: {word}" for word in FORBIDDEN
                  if word.encode() in content or word.lower().encode() in content]  # fmt: skip
    for command, output in zip(commands, printed, strict=True):
        # The terminal may show the real path to the person who runs the command (the
        # folders are named by patient); nothing else of an identity.
        # (Rich wraps long log lines; inspect's JSON gives paths inside the folder it read.)
        output = re.sub(r"[ \t]*\n[ \t]*", "", output)
        output = re.sub(re.escape(str(inputs)) + r"[^:\"]*", "<input path>", output)
        output = re.sub(r'"path": "[^"]*"', '"path": "<input path>"', output)
        found = [(w, re.search(re.escape(w), output, re.IGNORECASE)) for w in FORBIDDEN]
        leaks += [f"output of {command[0]}: {word}: {output[max(0, m.start() - 200) : m.end()]}"
                  for word, m in found if m]  # fmt: skip
    assert not leaks, "\n".join(leaks)
