"""Where an adaptation epoch's time goes, before and after, beside SKADA and bare PyTorch.

The adaptation benchmark's sharp-kernel pair at development seed 1 (80 source patients,
200 target patients, ResNet-18 on 2D 48 x 48 patches, batch 32, the safe augmentations):
``medadapt adapt`` runs each method with the engine, and the engine's own functions are
timed from outside (each wrapped with a clock, nothing in the engine changed for it):

- target batches: reading, augmenting and collating the target's training samples;
- source batches: the same for the source batches a method draws at each step;
- forward: the method's ``update`` (the source and the target passes and the losses);
- backward and optimiser: the rest of the training steps;
- epoch start: what a method does before its epoch (SHOT's pseudo-labels, AdaBN's pass);
- batch-norm pass: the statistics measured again after the epoch;
- validation: the target validation split predicted, and the label-free score;
- checkpoint: the epoch's state copied for writing, and any wait for the previous write.

Beside it, taking turns in the same run: the physical limit, a bare PyTorch loop doing
medadapt's DANN steps on the same batches held in memory (the same model, discriminator,
optimiser and batch size; no augmentation, no validation, no batch-norm pass, no
checkpoint), and SKADA's DANN epoch on the same patches. With ``baseline`` (a commit), the
same measurements run at that commit too, in a git worktree, taking turns with this tree.

    .venv/bin/python benchmarks/epoch_profile.py [--quick]          (or: make bench)
    MEDADAPT_BENCH_BASELINE=b5bdfea .venv/bin/python benchmarks/epoch_profile.py

Each measurement runs in its own process (``--measure``), so the two trees never share one.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import suite
from suite import Section

#: The commit the "before" column is measured at: the last one before issue 33 changed any
#: of the engine's epoch (override with $MEDADAPT_BENCH_BASELINE; "none" skips it).
BASELINE = "b5bdfea"
PAIR = "sharp kernel"
SEED = 1
METHODS = ["dann", "coral", "mmd", "tent", "shot", "adabn"]
#: The components of an epoch, in the order the table shows them.
PARTS = [
    "target batches",
    "source batches",
    "forward",
    "backward and optimiser",
    "epoch start",
    "batch-norm pass",
    "validation",
    "checkpoint",
]


# --- one measurement, in its own process ---------------------------------------------------


def _instrument() -> dict[str, float]:
    """Wrap the engine functions an epoch spends its time in with clocks; the totals."""
    import medadapt.engine.adaptation.runs as runs
    import medadapt.engine.output.atomic as atomic
    import medadapt.engine.training.loop as loop

    totals: dict[str, float] = collections.defaultdict(float)

    def timed(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start

        return wrapper

    def timed_batches(batches: Any, name: str) -> Any:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                totals[name] += time.perf_counter() - start
                return
            totals[name] += time.perf_counter() - start
            yield batch

    class Batches:
        def __init__(self, loader: Any, name: str) -> None:
            self.loader, self.name = loader, name

        def __iter__(self) -> Any:
            return timed_batches(self.loader, self.name)

        def __len__(self) -> int:
            return len(self.loader)

    make_loader = loop.Trainer._loader

    def loader(self: Any, data: Any, epoch: int, shuffle: bool, distributed: bool = True) -> Any:
        made = make_loader(self, data, epoch, shuffle, distributed)
        return Batches(made, "target batches") if shuffle else made

    forever = runs.forever

    def source_batches(*args: Any, **kwargs: Any) -> Any:
        return timed_batches(forever(*args, **kwargs), "source batches")

    step = runs.MethodObjective.step

    def method_step(self: Any, model: Any, patches: Any, labels: Any) -> Any:
        if not getattr(self.method, "_timed", False):
            self.method.update = timed("forward", self.method.update)
            self.method._timed = True
        return step(self, model, patches, labels)

    loop.Trainer._loader = loader
    runs.forever = source_batches
    runs.MethodObjective.step = method_step
    loop.Trainer._train_epoch = timed("training", loop.Trainer._train_epoch)
    loop.Trainer._recompute_batch_norm = timed(
        "batch-norm pass", loop.Trainer._recompute_batch_norm
    )
    loop.Trainer._validate = timed("validation", loop.Trainer._validate)
    # (a _write_epoch after every epoch until the checkpoint interval; since, the snapshot
    # each epoch, and the write when one is due: engine/training/checkpoints.py)
    if hasattr(loop.Trainer, "_write_epoch"):
        loop.Trainer._write_epoch = timed("checkpoint", loop.Trainer._write_epoch)
    else:
        import medadapt.engine.training.checkpoints as checkpoints

        loop.Trainer._snapshot = timed("checkpoint", loop.Trainer._snapshot)
        checkpoints.Checkpoints.write = timed("checkpoint", checkpoints.Checkpoints.write)
    # (the writer moved from the loop's module to output/atomic.py after b5bdfea)
    writer = getattr(loop, "_BackgroundWriter", None) or atomic.BackgroundWriter
    writer.wait = timed("checkpoint", writer.wait)
    runs.MethodObjective.start_epoch = timed("epoch start", runs.MethodObjective.start_epoch)
    return totals


def _profiles(
    work: Path, epochs: int, source_epochs: int, quick: bool, method: str = "dann"
) -> tuple[Any, Any]:
    import adaptation

    from medadapt.engine import get_plugin_host, load_profile
    from sites import site_profile

    registry = get_plugin_host().registry()
    settings = adaptation.Settings(quick)
    _, phantom, region = adaptation.PAIRS[PAIR]
    folder = work / "profiles"
    source = site_profile(
        folder,
        f"{PAIR} source",
        patients=settings.source_patients,
        phantom=adaptation.SOURCE,
        split=settings.source_split,
        seed=SEED,
        epochs=source_epochs,
    )
    target = site_profile(
        folder,
        f"{PAIR} target",
        patients=settings.target_patients,
        phantom={**adaptation.SOURCE, **phantom},
        phantom_seed=23,
        region=region,
        split=settings.target_split,
        seed=SEED,
        epochs=epochs,
        patience=None,
        adaptation={"method": method},
    )
    return load_profile(source, registry), load_profile(target, registry)


def measure(work: Path, methods: list[str], epochs: int, quick: bool) -> dict[str, Any]:
    """Each method's epochs, part by part, in this process's medadapt (at ``work``)."""
    totals = _instrument()
    from medadapt.engine import get_plugin_host, train
    from medadapt.engine.adaptation import adapt

    host = get_plugin_host()
    registry = host.registry()
    source, _ = _profiles(work, epochs, 1 if quick else 4, quick)
    cache = _cache(work)
    model = work / "source" / "model"
    if not model.is_dir():
        train(source, registry, host, work / "source", quiet=True, cache_dir=cache)
    import medadapt.engine

    results: dict[str, Any] = {"engine": str(Path(medadapt.engine.__file__).resolve().parent)}
    for method in methods:
        out = work / f"adapt-{method}"
        shutil.rmtree(out, ignore_errors=True)
        _, profile = _profiles(work, epochs, 1, quick, method)
        before = dict(totals)
        adapt(
            profile, registry, host, model, out, source_profile=source, quiet=True,
            cache_dir=cache,
        )  # fmt: skip
        run = next((out / "runs").glob(f"{method}-*"))
        history = json.loads((run / "history.json").read_text())["history"]
        spent = {key: totals[key] - before.get(key, 0.0) for key in totals}
        count = len(history)
        parts = {key: spent.get(key, 0.0) / count for key in PARTS if key in spent}
        training = spent.get("training", 0.0) / count
        parts["backward and optimiser"] = max(
            0.0,
            training
            - sum(parts.get(k, 0.0) for k in ("target batches", "source batches", "forward")),
        )
        results[method] = {
            "epochs": count,
            "epoch": statistics.mean(e["seconds"] for e in history),
            "parts": parts,
        }
        shutil.rmtree(out, ignore_errors=True)
    return results


def limit(work: Path, epochs: int, quick: bool) -> dict[str, Any]:
    """The bare PyTorch loop and SKADA's DANN on the same in-memory patches, per epoch."""
    import copy

    import adaptation
    import torch

    import peers
    from medadapt.engine import ComponentKind, get_plugin_host
    from medadapt.engine.models.model import load_model
    from medadapt.engine.training.loop import steps_per_epoch

    registry = get_plugin_host().registry()
    source, target = _profiles(work, epochs, 1, quick)
    cache = _cache(work)
    source_x, source_y = peers.arrays(adaptation._split(source, "train", registry, cache))
    target_x = _target_train(target, registry, cache)
    validation = peers.arrays(adaptation._split(target, "validation", registry, cache))
    classifier = load_model(work / "source" / "model", registry).model
    method = registry.create(ComponentKind.ADAPTATION_METHODS, "dann")
    batch = target.training.batch_size
    options = target.training.optimizer
    # As many steps as medadapt's DANN takes (it leaves out the incomplete batch since
    # 1adbb50, as SKADA does), so that the limit does the same work.
    steps = steps_per_epoch(len(target_x), batch, method.drop_incomplete_batch)

    model = copy.deepcopy(classifier)
    method.setup(model, model.head.in_features, model.head.out_features)
    groups = method.parameter_groups(options.lr, options.lr * options.backbone_lr_factor)
    optimiser = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(0)
    xs, ys = torch.from_numpy(source_x), torch.from_numpy(source_y)
    xt = torch.from_numpy(target_x)
    model.train()
    method.discriminator.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for step in range(steps):
            chosen = torch.randint(len(xs), (batch,), generator=generator)
            targets = order[step * batch : (step + 1) * batch]
            optimiser.zero_grad(set_to_none=True)
            losses = method.update(
                {"patches": xs[chosen], "labels": ys[chosen]},
                {"patches": xt[targets], "labels": torch.full((len(targets),), -1)},
            )
            losses["loss"].backward()
            optimiser.step()
    bare = (time.perf_counter() - start) / epochs
    peer = peers.run_skada(
        "DANN",
        classifier,
        (source_x, source_y),
        target_x,
        validation[0],
        epochs=epochs,
        batch_size=batch,
        lr=options.lr,
        weight_decay=options.weight_decay,
        seed=SEED,
    )
    full = max(len(source_x) // batch, len(target_x) // batch)
    return {
        "bare": bare,
        "bare steps": steps,
        "skada": peer.seconds_per_epoch,
        "skada steps": full,
        "target samples": len(target_x),
    }


def _cache(work: Path) -> Path:
    """The disk cache every measurement shares: $MEDADAPT_CACHE_DIR, else one in ``work``."""
    return Path(os.environ.get("MEDADAPT_CACHE_DIR") or work / "cache")


def _target_train(target: Any, registry: Any, cache: Path) -> Any:
    """The target's training patches as adapt serves them without augmentation (labels
    stripped: every training sample, labelled or not)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from medadapt.engine.adaptation import target_split
    from medadapt.engine.data.datasets import PatchDataset
    from medadapt.engine.data.samples import open_site_data

    site = open_site_data(target, registry, cache)
    split = target_split(site.records, target)
    data = PatchDataset(site.loader, split.train, target.task.classes)
    return np.concatenate([x.numpy() for x, _ in DataLoader(data, batch_size=64)])


# --- the section ------------------------------------------------------------------------------


def _tree(work: Path, commit: str) -> Path:
    """A package folder importing medadapt from ``commit`` (a git worktree in ``work``)."""
    checkout = work / f"tree-{commit}"
    if not checkout.is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(checkout), commit],
            cwd=suite.ROOT, check=True, capture_output=True,
        )  # fmt: skip
    package = work / f"package-{commit}" / "medadapt"
    if not package.is_dir():
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")  # a regular package: it comes before the
        # editable install's mapping, which Python asks only after sys.path
        for name in ("engine", "plugins", "hospital_profiles"):
            (package / name).symlink_to(checkout / name)
    return package.parent


def _run(work: Path, what: str, epochs: int, quick: bool, path: Path | None) -> dict[str, Any]:
    out = work / f"{what}-{time.monotonic_ns()}.json"
    env = {**os.environ, "MEDADAPT_CACHE_DIR": str(work.parent / "cache")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    command = [sys.executable, str(Path(__file__)), "--measure", what, "--work", str(work)]
    command += ["--epochs", str(epochs), "--result", str(out)] + (["--quick"] if quick else [])
    subprocess.run(command, check=True, env=env, cwd=work)
    return json.loads(out.read_text())


def _baseline() -> str | None:
    chosen = os.environ.get("MEDADAPT_BENCH_BASELINE", BASELINE)
    if chosen == "none":
        return None
    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{chosen}^{{commit}}"],
        cwd=suite.ROOT, capture_output=True, text=True,
    )  # fmt: skip
    return chosen if known.returncode == 0 else None


def run(quick: bool, work: Path) -> Section:
    epochs = 2 if quick else 4
    repeats = 1 if quick else 2
    methods = ["dann", "adabn"] if quick else METHODS
    baseline = None if quick else _baseline()
    trees: dict[str, Path | None] = {"now": None}
    if baseline:
        trees[f"before ({baseline})"] = _tree(work, baseline)
    # The trees take turns, and each its own work folder (its own source model); the
    # simulated patients and their patches are one disk cache, filled before any is timed.
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    limits: list[dict[str, Any]] = []
    for name, path in trees.items():
        folder = work / name.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        if not quick:  # quick times nothing that matters: its first run fills the cache
            _run(folder, "warm", 1, quick, path)
    for _ in range(repeats):
        for name, path in trees.items():
            folder = work / name.split()[0]
            result = _run(folder, ",".join(methods), epochs, quick, path)
            expected = (path / "medadapt" / "engine").resolve() if path else suite.ROOT / "engine"
            if Path(result["engine"]) != expected:
                raise RuntimeError(f"{name} ran the engine in {result['engine']}, not {expected}")
            measured[name].append(result)
        limits.append(_run(work / "now", "limit", epochs, quick, None))
    try:
        return _section(measured, limits, methods, epochs, repeats, baseline)
    finally:
        for path in trees.values():
            if path is not None:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(work / f"tree-{baseline}")],
                    cwd=suite.ROOT, capture_output=True,
                )  # fmt: skip


def _best(runs: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The repeat with the fastest whole epoch (the least disturbed by the machine)."""
    return min((r[method] for r in runs), key=lambda result: result["epoch"])


def _section(
    measured: dict[str, list[dict[str, Any]]],
    limits: list[dict[str, Any]],
    methods: list[str],
    epochs: int,
    repeats: int,
    baseline: str | None,
) -> Section:
    trees = list(measured)
    floor = min(limits, key=lambda row: row["bare"])
    peer = min(limits, key=lambda row: row["skada"])
    rows: list[dict[str, Any]] = []
    for tree in trees:
        for method in methods:
            best = _best(measured[tree], method)
            for part in [*PARTS, "whole epoch"]:
                seconds = best["epoch"] if part == "whole epoch" else best["parts"].get(part, 0)
                rows.append({"tree": tree, "method": method, "part": part, "seconds": seconds})
    rows += [
        {"tree": "now", "method": "bare PyTorch DANN", "part": "whole epoch",
         "seconds": floor["bare"]},
        {"tree": "now", "method": "SKADA DANN", "part": "whole epoch", "seconds": peer["skada"]},
    ]  # fmt: skip

    def seconds(tree: str, method: str, part: str) -> float:
        return next(
            r["seconds"]
            for r in rows
            if (r["tree"], r["method"], r["part"]) == (tree, method, part)
        )

    header = "| part of a DANN epoch | " + " | ".join(f"{t}, s" for t in trees) + " | share now |"
    now_total = seconds("now", "dann", "whole epoch")
    lines = [
        f"The adaptation benchmark's {PAIR} pair at development seed {SEED}: "
        f"{floor['target samples']} target training samples, batch 32 (medadapt's DANN "
        f"takes {floor['bare steps']} steps an epoch, and so does the bare loop; "
        f"{-(-floor['target samples'] // 32)} before 1adbb50, which left out no incomplete "
        f"batch). Every method runs {epochs} epochs with "
        "`adapt` (the unadapted model's candidate run is not timed); seconds are the mean "
        f"per epoch of the fastest of {repeats} run(s), the trees taking turns, each in its own "
        "process. The parts are the engine's own functions, timed from outside "
        "(benchmarks/epoch_profile.py); backward and optimiser is the training time less the "
        "batches and the forward passes.",
        "",
        header,
        "|---|" + "---:|" * (len(trees) + 1),
    ]
    for part in [*PARTS, "whole epoch"]:
        cells = " | ".join(f"{seconds(t, 'dann', part):.3f}" for t in trees)
        share = seconds("now", "dann", part) / now_total
        lines.append(f"| {part} | {cells} | {share:.0%} |")
    lines += [
        "",
        "| run (now) | seconds per epoch | steps | vs bare PyTorch |",
        "|---|---:|---:|---:|",
        f"| bare PyTorch, medadapt's DANN steps in memory (the limit) | {floor['bare']:.3f} | "
        f"{floor['bare steps']} | 1.00x |",
        f"| SKADA DANN | {peer['skada']:.3f} | {peer['skada steps']} | "
        f"{peer['skada'] / floor['bare']:.2f}x |",
    ]
    for method in methods:
        total = seconds("now", method, "whole epoch")
        ratio = total / floor["bare"]
        lines.append(f"| medadapt {method}, whole epoch | {total:.3f} |  | {ratio:.2f}x |")
    lines.append("")
    if len(trees) > 1:
        before = seconds(trees[1], "dann", "whole epoch")
        lines.append(
            f"- DANN's whole epoch: {before:.3f} s at {baseline}, {now_total:.3f} s now "
            f"({before / now_total:.2f}x faster)."
        )
    lines += [
        f"- now, against the limit: DANN's whole epoch {now_total / floor['bare']:.2f}x the "
        f"bare loop (target within 1.15x): {suite.verdict(now_total <= 1.15 * floor['bare'])}",
        f"- now, against SKADA: DANN's whole epoch {now_total / peer['skada']:.2f}x SKADA's "
        f"(target at most 1.0x): {suite.verdict(now_total <= peer['skada'])}; per step "
        f"{(now_total / floor['bare steps']) / (peer['skada'] / peer['skada steps']):.2f}x.",
    ]
    return Section(
        heading="Where an adaptation epoch's time goes",
        lines=lines,
        tables={"epoch_profile": rows},
        command=".venv/bin/python benchmarks/epoch_profile.py",
    )


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--measure")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args()
    if args.measure is None:
        suite.main(["--only", "epoch_profile", *sys.argv[1:]])
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.measure == "limit":
        result = limit(args.work, args.epochs, args.quick)
    elif args.measure == "warm":
        result = measure(args.work, ["dann"], 1, args.quick)
    else:
        result = measure(args.work, args.measure.split(","), args.epochs, args.quick)
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    _main()
