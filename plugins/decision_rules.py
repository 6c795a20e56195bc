"""How ``auto`` decides which candidate to keep: the built-in decision rules.

Every rule keeps the unadapted model unless its evidence says otherwise, and says in one
sentence what its choice rests on:

- ``validation-bootstrap`` (the default when the site labels its validation patients): an
  adapted model is kept only when its validation AUROC beats the unadapted model's by more
  than a margin at the lower bound of a paired patient-level bootstrap interval;
- ``agreement-guard`` (the default without labels): the candidate that agrees most with the
  others (EnsV), kept only when the candidates agree (it matches their mean on most
  validation samples) and it out-agrees the unadapted model in most bootstrap resamples of
  the validation patients; its choice is a label-free proposal;
- ``best-validation-auroc`` and ``ensemble-agreement``: the same choices without the guard,
  for comparison (benchmarks/adaptation.py shows what the guards change).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import (
    Candidate,
    Decision,
    DecisionRule,
    Evidence,
    PatientBootstrap,
    hookimpl,
    rank_auroc,
    resampled_auroc,
)


def ensemble_agreement(probabilities: dict[str, np.ndarray]) -> dict[str, float]:
    """Each candidate's agreement with the mean prediction of the other candidates (EnsV).

    The mean of several candidates' probabilities is a better labeller of the target than
    most candidates alone (Hu et al., 2023, "Mitigating the bias in the model selection of
    unsupervised domain adaptation" / EnsV); each candidate is scored by the share of
    samples whose predicted class matches the ensemble's. No candidate's training objective
    is the criterion, so none is favoured for optimising it.

    One departure from the published rule: a candidate is compared with the ensemble of the
    *other* candidates (leave one out). Judged against an ensemble that includes it, a
    confident candidate that disagrees with the rest can tip the mean its way with its own
    vote and be rated best for it (docs/adaptation.md).

    Example:
        >>> p = {"a": np.array([[0.9, 0.1], [0.2, 0.8]]), "b": np.array([[0.8, 0.2], [0.3, 0.7]]),
        ...      "c": np.array([[0.4, 0.6], [0.4, 0.6]])}
        >>> ensemble_agreement(p)
        {'a': 1.0, 'b': 1.0, 'c': 0.5}
    """
    if len(probabilities) < 2:
        return {name: 1.0 for name in probabilities}
    return {name: float(m.mean()) for name, m in _matches(probabilities).items()}


def _matches(probabilities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per candidate and sample, whether its predicted class matches the mean prediction
    of the other candidates."""
    total = np.sum(list(probabilities.values()), axis=0)
    return {
        name: own.argmax(axis=1) == (total - own).argmax(axis=1)
        for name, own in probabilities.items()
    }


def _best(scores: dict[str, float], unadapted: str) -> str:
    """The name with the highest score; a tie goes to the unadapted model, then to the
    earliest candidate."""
    top = max(scores.values())
    tied = [name for name, value in scores.items() if value == top]
    return unadapted if unadapted in tied else tied[0]


def _by_name(evidence: Evidence) -> dict[str, Candidate]:
    return {evidence.name(c): c for c in evidence.candidates}


# --- with validation labels --------------------------------------------------------------


class _Labelled:
    """The labelled validation samples, and each candidate's AUROC on them."""

    def __init__(self, evidence: Evidence) -> None:
        assert evidence.labels is not None
        keep = evidence.labels >= 0
        self.labels = evidence.labels[keep].astype(int)
        self.patients = [p for p, k in zip(evidence.patients, keep, strict=True) if k]
        self.scores = {
            evidence.name(c): c.probabilities[keep, evidence.positive_index]
            for c in evidence.candidates
        }
        self.auroc = {name: rank_auroc(self.labels, s) for name, s in self.scores.items()}

    @property
    def measurable(self) -> bool:
        return 0 < self.labels.sum() < len(self.labels)

    def difference(
        self, name: str, unadapted: str, level: float, resamples: int, seed: int
    ) -> dict[str, float | int | None]:
        """AUROC of ``name`` minus the unadapted model's, paired patient bootstrap."""
        boot = PatientBootstrap(self.patients, level=level, resamples=resamples, seed=seed)
        ours, theirs = self.auroc[name], self.auroc[unadapted]
        weights = boot.weights()
        estimate = boot.interval(
            None if ours is None or theirs is None else ours - theirs,
            resampled_auroc(self.labels, self.scores[name], weights)
            - resampled_auroc(self.labels, self.scores[unadapted], weights),
        )
        return {
            "value": estimate.value,
            "low": estimate.low,
            "high": estimate.high,
            "level": level,
            "patients": boot.patients,
        }


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _margin_text(margin: dict[str, float | int | None]) -> str:
    value, low, high = margin["value"], margin["low"], margin["high"]
    if value is None:
        return "not measurable"
    text = f"{value:+.3f}"
    if low is not None and high is not None:
        text += f" ({low:+.3f} to {high:+.3f})"
    return text


def _unmeasurable(evidence: Evidence) -> Decision:
    return Decision(
        kept=evidence.unadapted,
        evidence="labels",
        statement=(
            f"kept the unadapted model: the {evidence.labelled_patients} labelled validation "
            "patients hold one class only, so no candidate's AUROC could be measured"
        ),
    )


class ValidationBootstrap(DecisionRule):
    """Keep an adapted model only when its validation AUROC beats the unadapted model's by
    a margin that survives a paired patient-level bootstrap."""

    name = "validation-bootstrap"
    needs_labels = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        level: float = Field(
            default=0.80,
            gt=0.5,
            lt=1.0,
            description="the two-sided level of the bootstrap interval whose lower bound "
            "must clear the margin (0.80: a one-sided 90% bound)",
        )
        margin: float = Field(
            default=0.01,
            ge=0.0,
            lt=1.0,
            description="how much higher than the unadapted model's the kept model's "
            "validation AUROC must be, at the interval's lower bound",
        )
        resamples: int = Field(default=2000, ge=100, description="bootstrap resamples")

    def decide(self, evidence: Evidence) -> Decision:
        """Among the adapted models whose lower bound clears the margin, the one with the
        highest validation AUROC; else the unadapted model.

        Example:
            >>> import numpy as np
            >>> from medadapt.engine import Candidate, Evidence
            >>> y = np.array([0, 1] * 20)
            >>> good = np.stack([1 - y * 0.8 - 0.1, y * 0.8 + 0.1], axis=1)
            >>> coin = np.full((40, 2), 0.5)
            >>> evidence = Evidence((Candidate("source-only", 0, coin),
            ...                      Candidate("coral", 0, good)),
            ...                     tuple(f"p{i}" for i in range(40)), y, 1)
            >>> ValidationBootstrap().decide(evidence).kept.method
            'coral'
        """
        labelled = _Labelled(evidence)
        if not labelled.measurable:
            return _unmeasurable(evidence)
        p = self.params
        unadapted = evidence.name(evidence.unadapted)
        margins = {
            name: labelled.difference(name, unadapted, p.level, p.resamples, evidence.seed)
            for name in labelled.auroc
            if name != unadapted
        }
        figures: dict[str, dict[str, float | None]] = {
            name: {
                "validation_auroc": value,
                "auroc_difference_low": _float(margins[name]["low"]) if name in margins else None,
            }
            for name, value in labelled.auroc.items()
        }
        clears = [
            name
            for name, m in margins.items()
            if (low := _float(m["low"])) is not None and low > p.margin
        ]
        patients = len(set(labelled.patients))
        if clears:
            kept = max(clears, key=lambda name: labelled.auroc[name] or 0.0)
            margin = margins[kept]
            statement = (
                f"kept {kept}: validation AUROC {_margin_text(margin)} over the unadapted "
                f"model ({labelled.auroc[unadapted]:.3f}), {p.level:.0%} paired bootstrap on "
                f"{patients} labelled patients, above the margin {p.margin:.2f}"
            )
            return Decision(
                _by_name(evidence)[kept], "labels", statement, margin=margin, figures=figures
            )
        best = max(margins, key=lambda n: labelled.auroc[n] or 0.0) if margins else None
        if best is None:
            statement = "kept the unadapted model: no adapted model was tried"
            margin = None
        else:
            margin = margins[best]
            statement = (
                f"kept the unadapted model: the best adapted model, {best}, has validation "
                f"AUROC {_margin_text(margin)} over it ({p.level:.0%} paired bootstrap on "
                f"{patients} labelled patients), which does not clear the margin "
                f"{p.margin:.2f}"
            )
        return Decision(evidence.unadapted, "labels", statement, margin=margin, figures=figures)


class BestValidationAuroc(DecisionRule):
    """Keep the candidate with the highest validation AUROC, with no margin or bootstrap
    (for comparison: a tie keeps the unadapted model)."""

    name = "best-validation-auroc"
    needs_labels = True

    def decide(self, evidence: Evidence) -> Decision:
        labelled = _Labelled(evidence)
        if not labelled.measurable:
            return _unmeasurable(evidence)
        unadapted = evidence.name(evidence.unadapted)
        auroc = {n: -1.0 if v is None else v for n, v in labelled.auroc.items()}
        kept = _best(auroc, unadapted)
        patients = len(set(labelled.patients))
        statement = (
            f"kept {_kept(kept, unadapted)}: the highest validation AUROC, {auroc[kept]:.3f}, "
            f"on {patients} labelled patients (unadapted {auroc[unadapted]:.3f}; no margin "
            "required)"
        )
        figures = {n: {"validation_auroc": v} for n, v in labelled.auroc.items()}
        return Decision(_by_name(evidence)[kept], "labels", statement, figures=figures)


# --- without labels ----------------------------------------------------------------------

#: What every label-free decision is, said after the name of what it kept.
PROPOSAL = "as a label-free proposal (not measured; run validate)"


def _kept(name: str, unadapted: str) -> str:
    return "the unadapted model" if name == unadapted else name


class EnsembleAgreement(DecisionRule):
    """Keep the candidate that agrees most with the mean prediction of the others (EnsV,
    leave one out), without a guard (for comparison)."""

    name = "ensemble-agreement"
    needs_labels = False

    def decide(self, evidence: Evidence) -> Decision:
        candidates = _by_name(evidence)
        unadapted = evidence.name(evidence.unadapted)
        agreement = ensemble_agreement({n: c.probabilities for n, c in candidates.items()})
        kept = _best(agreement, unadapted)
        statement = (
            f"kept {_kept(kept, unadapted)} {PROPOSAL}: it agrees most with the other "
            f"candidates' mean prediction ({agreement[kept]:.3f} of "
            f"{len(evidence.patients)} validation samples; no guard)"
        )
        figures = {n: {"agreement": v} for n, v in agreement.items()}
        return Decision(candidates[kept], "label-free", statement, figures=figures)


class AgreementGuard(DecisionRule):
    """Propose the candidate that agrees most with the others (EnsV), but keep the unadapted
    model when the candidates disagree (the proposal matches their mean prediction on too few
    samples), or unless the proposal out-agrees it in most bootstrap resamples of the
    validation patients."""

    name = "agreement-guard"
    needs_labels = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        stability: float = Field(
            default=0.99,
            gt=0.5,
            le=1.0,
            description="the share of patient-bootstrap resamples in which the proposed "
            "model must agree with the others more than the unadapted model does",
        )
        consensus: float = Field(
            default=0.80,
            ge=0.0,
            le=1.0,
            description="the share of validation samples on which the proposed model must "
            "match the other candidates' mean prediction: below it the candidates disagree, "
            "their mean is no reliable labeller, and the unadapted model is kept",
        )
        resamples: int = Field(default=1000, ge=100, description="bootstrap resamples")

    def decide(self, evidence: Evidence) -> Decision:
        """The proposal, or the unadapted model when the candidates disagree or the
        proposal is not stable.

        Example:
            >>> import numpy as np
            >>> from medadapt.engine import Candidate, Evidence
            >>> a = np.array([[0.9, 0.1], [0.1, 0.9]] * 20)
            >>> adapted = tuple(Candidate(name, 0, a) for name in ("x", "y", "z"))
            >>> evidence = Evidence((Candidate("source-only", 0, a[:, ::-1]), *adapted),
            ...                     tuple(f"p{i}" for i in range(40)), None, 1)
            >>> AgreementGuard().decide(evidence).kept.method
            'x'
        """
        candidates = _by_name(evidence)
        unadapted = evidence.name(evidence.unadapted)
        tables = {n: c.probabilities for n, c in candidates.items()}
        agreement = ensemble_agreement(tables)
        proposed = _best(agreement, unadapted)
        figures: dict[str, dict[str, float | None]] = {
            n: {"agreement": v} for n, v in agreement.items()
        }
        samples = len(evidence.patients)
        if proposed == unadapted:
            statement = (
                f"kept the unadapted model {PROPOSAL}: no adapted model agrees more with the "
                f"other candidates ({agreement[unadapted]:.3f} of {samples} validation samples)"
            )
            return Decision(evidence.unadapted, "label-free", statement, figures=figures)
        if agreement[proposed] < self.params.consensus:
            statement = (
                f"kept the unadapted model {PROPOSAL}: the candidates disagree; {proposed}, "
                f"which agrees most with the others, matches their mean prediction on only "
                f"{agreement[proposed]:.3f} of {samples} validation samples, below "
                f"{self.params.consensus:.2f}"
            )
            return Decision(evidence.unadapted, "label-free", statement, figures=figures)
        wins = self._wins(tables, proposed, unadapted, evidence)
        figures[proposed]["bootstrap_wins"] = wins
        share = f"{wins:.0%} of patient-bootstrap resamples"
        if wins < self.params.stability:
            statement = (
                f"kept the unadapted model {PROPOSAL}: {proposed} agrees most with the other "
                f"candidates ({agreement[proposed]:.3f} against {agreement[unadapted]:.3f} of "
                f"{samples} validation samples), but only in {share}, short of "
                f"{self.params.stability:.0%}"
            )
            return Decision(evidence.unadapted, "label-free", statement, figures=figures)
        statement = (
            f"kept {proposed} {PROPOSAL}: it agrees most with the other candidates "
            f"({agreement[proposed]:.3f} against the unadapted model's "
            f"{agreement[unadapted]:.3f} of {samples} validation samples, in {share})"
        )
        return Decision(candidates[proposed], "label-free", statement, figures=figures)

    def _wins(
        self, tables: dict[str, np.ndarray], proposed: str, unadapted: str, evidence: Evidence
    ) -> float:
        """The share of patient-bootstrap resamples in which ``proposed`` agrees with the
        others more than the unadapted model does."""
        boot = PatientBootstrap(
            evidence.patients, resamples=self.params.resamples, seed=evidence.seed
        )
        # Resampling patients only reweighs the per-sample matches, so they are computed once;
        # both shares of a resample have the same denominator (its samples), so comparing
        # the counts of matches drawn is comparing the shares, exactly.
        matches = _matches(tables)
        weights = boot.weights()
        ours, theirs = (matches[n].astype(np.int64) for n in (proposed, unadapted))
        won = weights @ ours > weights @ theirs
        return float(np.mean(won))


@hookimpl
def medadapt_decision_rules() -> Sequence[type[DecisionRule]]:
    return [ValidationBootstrap, BestValidationAuroc, AgreementGuard, EnsembleAgreement]
