"""Shared fixtures: throwaway plugins, installed-distribution fakes and profile files."""

from __future__ import annotations

import copy
import math
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydicom.uid import generate_uid

from medadapt.engine import (
    AdaptationMethod,
    Augmentation,
    Backbone,
    DataSource,
    LabelProperty,
    ProfilePath,
    ScanResult,
    SelectionScore,
    hookimpl,
)
from medadapt.engine.contracts.host import PluginHost, get_plugin_host
from medadapt.engine.data.pseudonym import Pseudonymizer
from medadapt.plugins.dicom_ct.writer import ct_slice

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "hospital_profiles" / "template.yaml"

# pytester checks the fast tier's guard (tests/test_tiers.py).
pytest_plugins = ["pytester"]


# --- a throwaway plugin that provides one component of every kind --------------------------


class FolderSource(DataSource):
    """Reads nothing; stands in for a data source with a required parameter."""

    name = "toy-folder"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        root: ProfilePath
        recursive: bool = True

    def scan(self, label_file=None) -> ScanResult:
        return ScanResult(records=[])

    def load(self, record):
        raise NotImplementedError


class GentleNoise(Augmentation):
    """Adds noise of a bounded amplitude: changes HU by at most `amplitude`."""

    name = "toy-noise"
    preserves: ClassVar = frozenset({LabelProperty.LATERALITY, LabelProperty.SIZE})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        amplitude: float = Field(default=5.0, ge=0)

    def changes(self):
        return {LabelProperty.TEXTURE: math.inf, LabelProperty.ABSOLUTE_HU: self.params.amplitude}

    def transform(self):
        return lambda patch: patch


class Mirror(Augmentation):
    """Flips left and right: keeps everything but laterality."""

    name = "toy-mirror"
    preserves: ClassVar = frozenset(set(LabelProperty) - {LabelProperty.LATERALITY})

    def transform(self):
        return lambda patch: patch[..., ::-1]


class VolumeNet(Backbone):
    """A 3D-only backbone."""

    name = "toy-volume-net"
    spatial_dims: ClassVar = frozenset({3})

    def build(self, in_channels, weights):
        raise NotImplementedError


class SupervisedTuning(AdaptationMethod):
    """Needs labels at the target site."""

    name = "toy-finetune"
    needs_source_data = False
    needs_target_labels = True

    def setup(self, model, feature_dim, num_classes):
        self.model = model

    def update(self, source_batch, target_batch):
        return {}


class MaxProbability(SelectionScore):
    """Mean of the largest predicted probability."""

    name = "toy-confidence"
    higher_is_better = True

    def score(self, probabilities, features=None):
        return float(np.asarray(probabilities).max(axis=1).mean())


class ToyPlugin:
    """A plugin object, as a test would register it."""

    @hookimpl
    def medadapt_data_sources(self):
        return [FolderSource]

    @hookimpl
    def medadapt_augmentations(self):
        return [GentleNoise, Mirror]

    @hookimpl
    def medadapt_backbones(self):
        return [VolumeNet]

    @hookimpl
    def medadapt_adaptation_methods(self):
        return [SupervisedTuning]

    @hookimpl
    def medadapt_selection_scores(self):
        return [MaxProbability]


@pytest.fixture
def host() -> PluginHost:
    """A fresh host with the installed plugins loaded, independent of the CLI's."""
    fresh = PluginHost()
    fresh.load_entry_points()
    return fresh


@pytest.fixture
def register() -> Iterator[Callable[[object, str], None]]:
    """Register throwaway plugins in the CLI's host; they are removed after the test."""
    cli_host = get_plugin_host()
    names: list[str] = []

    def _register(plugin: object, name: str) -> None:
        cli_host.register(plugin, name)
        names.append(name)

    try:
        yield _register
    finally:
        for name in names:
            cli_host.unregister(name)


@pytest.fixture
def toy() -> ToyPlugin:
    """A plugin providing one toy component of every kind."""
    return ToyPlugin()


@pytest.fixture
def toy_plugin(register, toy) -> None:
    """The toy plugin, registered in the CLI's host for this test."""
    register(toy, "toy")


# --- installed distributions, for the real entry-point path --------------------------------


@pytest.fixture
def install_distribution(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Write an installed distribution (dist-info with entry points, and its modules) into a
    folder on sys.path, so importlib.metadata finds it exactly as it finds a pip install."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def _install(name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[medadapt]\n{lines}")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        return site

    yield _install
    for module in list(sys.modules):
        if module.startswith("thirdparty_"):
            del sys.modules[module]


# --- profiles ------------------------------------------------------------------------------


#: The card of a small CNN on 2D 24 x 24 patches: a model folder without training.
SMALL_CARD = {
    "site": "Export Hospital",
    "intended_use": "tests.",
    "classes": ["benign", "malignant"],
    "positive_class": "malignant",
    "preprocessing": {
        "window": {"level": 40, "width": 400},
        "spacing_mm": [2.0, 1.0, 1.0],
        "patch_mode": "2d",
        "patch_size": [24, 24],
    },
    "backbone": {"name": "small-cnn"},
}


@pytest.fixture
def small_model(tmp_path) -> Path:
    """A small CNN model folder (``SMALL_CARD``), its batch-norm statistics away from the
    identity."""
    import torch

    from medadapt.engine.models.card import ModelCard
    from medadapt.engine.models.model import build_classifier, save_model

    torch.manual_seed(0)
    registry = get_plugin_host().registry()
    model = build_classifier(registry.create("backbones", "small-cnn", {}), "2d", 2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return save_model(tmp_path / "model", model, ModelCard.model_validate(SMALL_CARD))


@pytest.fixture
def small_model_profile(tmp_path) -> Path:
    """A profile that says what ``small_model``'s weights cannot: task and preprocessing."""
    path = tmp_path / "small-model.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": {"name": SMALL_CARD["site"]},
                "intended_use": "tests",
                "body_region": "chest",
                "acceptance": {"min_auroc": 0.8},
                "task": {
                    "classes": SMALL_CARD["classes"],
                    "positive_class": SMALL_CARD["positive_class"],
                    "label_depends_on": ["shape"],
                },
                "preprocessing": SMALL_CARD["preprocessing"],
                "backbone": SMALL_CARD["backbone"],
            }
        )
    )
    return path


@pytest.fixture
def write_profile(tmp_path) -> Callable[..., Path]:
    """Write the template profile with some sections replaced; None removes a section."""

    def _write(name: str = "site.yaml", **sections: object) -> Path:
        data = yaml.safe_load(TEMPLATE.read_text())
        for key, value in sections.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


def _phantom_site(
    name: str,
    seed: int,
    patients: int = 24,
    epochs: int = 3,
    split: tuple[float, float, float] = (0.5, 0.25, 0.25),
    **params: object,
) -> dict:
    """A small simulated site's profile (small CNN, 2D 24 x 24 patches), as a dictionary."""
    return {
        "site": {"name": name},
        "intended_use": "tests",
        "body_region": "chest",
        "seed": 1,
        "task": {
            "classes": ["benign", "malignant"],
            "positive_class": "malignant",
            "label_depends_on": ["shape", "texture", "absolute-hu"],
        },
        "data": {
            "source": "phantom",
            "params": {"patients": patients, "seed": seed, "slices": 12, "size": 96, **params},
            "split": dict(zip(("train", "validation", "test"), split, strict=True)),
        },
        "preprocessing": copy.deepcopy(SMALL_CARD["preprocessing"]),
        "backbone": {"name": "small-cnn"},
        "training": {"epochs": epochs, "batch_size": 8, "early_stopping_patience": None},
        "adaptation": {"method": "adabn"},
        "acceptance": {"min_auroc": 0.5, "min_test_patients": 1},
    }


@pytest.fixture(scope="session")
def phantom_site() -> Callable[..., dict]:
    """Makes a small simulated site's profile dictionary: ``phantom_site(name, seed, ...)``."""
    return _phantom_site


@pytest.fixture
def run_medadapt() -> Callable[..., subprocess.CompletedProcess]:
    """Run the installed command line in a new process, as a user would."""

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "medadapt.engine", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    return _run


# --- DICOM CT written by the tests ---------------------------------------------------------

#: Identifying values written into every test file; they must never appear in any output.
PATIENT_NAME = "Doe^Jane^Identifiable"
PATIENT_IDS = ("MRN-0042-PHI", "MRN-0077-PHI")


class CTWriter:
    """Writes CT series with pydicom, the way a scanner would export them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def series(
        self,
        name: str,
        *,
        slices: int = 6,
        size: int = 16,
        spacing: float = 2.5,
        row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0),
        col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0),
        origin: tuple[float, float, float] = (-20.0, -20.0, 100.0),
        positions: list[float] | None = None,
        patient_id: str = PATIENT_IDS[0],
        series_uid: str | None = None,
        slope: float = 1.0,
        intercept: float = -1024.0,
        seed: int = 0,
        **extra: object,
    ) -> tuple[list[Path], np.ndarray]:
        """Write one series; returns its files (in slice order) and the stored values."""
        rng = np.random.default_rng(seed)
        stored = rng.integers(0, 2000, size=(slices, size, size), dtype=np.int16)
        normal = np.cross(row_dir, col_dir)
        heights = positions if positions is not None else [k * spacing for k in range(slices)]
        series_uid = series_uid or generate_uid()
        study_uid = generate_uid()
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, height in enumerate(heights):
            ds = ct_slice(
                stored[k],
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=series_uid,
                position=np.asarray(origin) + height * normal,
                orientation=(*row_dir, *col_dir),
                pixel_spacing=(0.7, 0.8),
                slice_thickness=spacing,
                instance=k + 1,
                slope=slope,
                intercept=intercept,
                attributes={
                    "PatientName": PATIENT_NAME,
                    "PatientBirthDate": "19700101",
                    "AccessionNumber": "ACC-PHI-991",
                    "Manufacturer": "Test Vendor",
                    "ManufacturerModelName": "Phantom 64",
                    "ConvolutionKernel": "B30f",
                    "KVP": 120,
                    **extra,
                },
            )
            path = folder / f"slice-{k:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        return files, stored


@pytest.fixture
def ct(tmp_path) -> CTWriter:
    """Writes CT series into a fresh folder."""
    return CTWriter(tmp_path / "dicom")


@pytest.fixture
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer("a-test-site-secret-0123456789")


@pytest.fixture
def pydicom_test_files() -> Path:
    """The real files shipped inside pydicom."""
    return Path(pydicom.__file__).parent / "data" / "test_files"


# --- example plugin packages ------------------------------------------------------------------


@pytest.fixture(scope="session")
def pip_install_example() -> Callable[[Path, Path], Path]:
    """Pip-installs an example package into a folder of its own (put it on PYTHONPATH to
    use it): ``pip_install_example(package, work)`` returns ``work/site``."""
    return _pip_install


def _pip_install(package: Path, work: Path) -> Path:
    import shutil

    source = work / "src"
    shutil.copytree(
        package, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "-q",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


# --- the fast tier stays fast ----------------------------------------------------------------
#
# `make test-fast` runs `pytest -m "not slow"` for the development loop. A test that trains a
# model, runs a job that trains or adapts one, builds a wheel, runs pip or launches torchrun
# belongs to the slow tier: outside it, those calls fail the test with the reason, during its
# fixtures' setup as well as its body (so a fixture shared with slow tests is caught when the
# fast tier sets it up first, which is always the case under -m "not slow").

HEAVY_SUBCOMMANDS = frozenset({"train", "adapt", "demo", "batch"})


def _heavy_command(args: object) -> str | None:
    """What a subprocess command line would do that the fast tier must not, or None."""
    if isinstance(args, str | bytes):
        words = shlex.split(os.fsdecode(args))
    else:
        words = [os.fsdecode(word) for word in args]  # type: ignore[union-attr]
    names = [Path(word).name for word in words]
    if "pip" in names or any(name.startswith("pip3") for name in names):
        return "runs pip"
    if "bdist_wheel" in names or ("-m" in names and {"build", "wheel"} & set(names)):
        return "builds a wheel"
    if "torch.distributed.run" in names or "torchrun" in names:
        return "launches torchrun"
    if any(name == "medadapt" or name == "medadapt.engine" for name in names):
        heavy = HEAVY_SUBCOMMANDS & set(names)
        if heavy:
            return f"runs `medadapt {sorted(heavy)[0]}`"
    return None


class _FastTierGuard:
    """Patches the heavy entry points for one phase of one test outside the slow tier."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.patch = pytest.MonkeyPatch()
        self.violations: list[str] = []

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        pytest.fail(
            f"{self.item.nodeid} {what}, which belongs to the slow tier: mark it "
            "@pytest.mark.slow (see tests/conftest.py, 'the fast tier stays fast')",
            pytrace=False,
        )

    def __enter__(self) -> _FastTierGuard:
        from medadapt.engine.training.loop import Trainer

        guard = self

        def fit(*_args: object, **_kwargs: object) -> None:
            guard.refuse("trains a model (Trainer.fit)")

        class GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, args: object, *rest: object, **kwargs: object) -> None:
                heavy = _heavy_command(args)
                if heavy:
                    guard.refuse(heavy)
                super().__init__(args, *rest, **kwargs)  # type: ignore[arg-type]

        self.patch.setattr(Trainer, "fit", fit)
        self.patch.setattr(subprocess, "Popen", GuardedPopen)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.patch.undo()


def _guarded(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is None


def _run_guarded(item: pytest.Item) -> Iterator[None]:
    if not _guarded(item):
        return (yield)
    with _FastTierGuard(item) as guard:
        result = yield
    if guard.violations:
        # The code under test may have caught the failure (a job that reports its errors).
        pytest.fail(
            f"{item.nodeid} {guard.violations[0]}: mark it @pytest.mark.slow", pytrace=False
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _run_guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _run_guarded(item))


# --- two workers, each file on one ---------------------------------------------------------
#
# `make test` runs on two pytest-xdist workers with `--dist loadgroup`: tests of one group run
# on one worker, one after another. Every test is in its file's group, so that a file's
# module fixtures (a trained source model, the demo's run) are made once, unless it names a
# group of its own: the benchmarks' quick runs do, one each, so they run side by side.


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


# --- one core's worth of threads per worker -------------------------------------------------
#
# Each worker's torch would start as many threads as the machine has cores, and so would the
# processes a test starts (the demo, the CLI): on two workers that is twice as many busy
# threads as cores, and torch's threads wait on each other. A worker gets its share of the
# cores, and the processes it starts inherit it (OMP_NUM_THREADS); a value already set wins.


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(int(workers), 1))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
