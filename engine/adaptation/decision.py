"""How ``adapt`` compares its candidates and decides which to keep.

The candidates are every method's run at every seed and, whenever the classes allow, the
unadapted source model. What they are compared on is their predictions on the target
validation patients (:class:`~medadapt.engine.contracts.components.Evidence`); the test
split is never part of it. A decision rule (a plugin component, plugins/decision_rules.py)
decides; which rule is the profile's ``adaptation.decision.rule``, by default
``validation-bootstrap`` when the validation patients are labelled and ``agreement-guard``
when they are not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medadapt.engine.contracts.components import (
    Candidate,
    Decision,
    DecisionRule,
    Evidence,
    SampleRecord,
)
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.profile import DEFAULT_RULE_WITH_LABELS, DEFAULT_RULE_WITHOUT_LABELS, Profile

#: The rules used when the profile names none (engine/profile/schema.py).
WITH_LABELS = DEFAULT_RULE_WITH_LABELS
WITHOUT_LABELS = DEFAULT_RULE_WITHOUT_LABELS


def decision_rule(
    target: Profile, registry: ComponentRegistry, validation_labelled: bool
) -> DecisionRule:
    """The profile's decision rule, or the default for the labels the site gave.

    Raises:
        InvalidInputError: the rule needs labels and the validation patients have none.
    """
    choice = target.adaptation_settings.decision
    name = choice.rule or (WITH_LABELS if validation_labelled else WITHOUT_LABELS)
    rule = registry.build(DecisionRule, name, choice.params, base_dir=target.base_dir)
    if rule.needs_labels and not validation_labelled:
        raise InvalidInputError(
            f"the decision rule {name!r} needs labelled validation patients, and none of "
            f"{target.site.name}'s validation samples has a label: set "
            "adaptation.target_labels to validation, or choose a label-free rule"
        )
    return rule


def evidence(
    candidates: Sequence[Candidate],
    validation: Sequence[SampleRecord],
    classes: Sequence[str],
    positive_class: str,
    seed: int,
) -> Evidence:
    """The evidence a rule decides on: the candidates' validation predictions, whose
    patients they are, and the labels adaptation may see (None when it may see none)."""
    labels = None
    if any(r.label is not None for r in validation):
        labels = np.array(
            [-1 if r.label is None else int(r.label == positive_class) for r in validation]
        )
    return Evidence(
        candidates=tuple(candidates),
        patients=tuple(r.patient_key for r in validation),
        labels=labels,
        positive_index=list(classes).index(positive_class),
        seed=seed,
    )


#: Who decided, where no rule could: the only candidate, or the method the user named.
ONLY_CANDIDATE = "only candidate"
AS_ASKED = "as asked"


def decide(
    rule: DecisionRule, evidence: Evidence, asked: str | None, best_run: Candidate | None
) -> tuple[Decision, str]:
    """Apply ``rule``, and say who decided (the rule's name, or why no rule could).

    Without the unadapted model among the candidates there is nothing for a rule to guard
    against: a method the user named ran without validation labels (with only the
    unadapted model beside it, no label-free rule can compare the two), or the target's
    classes differ from the source model's. Then ``best_run`` is kept, and the words say so.

    Args:
        asked: the method named with ``--method`` (or the profile's), None under ``auto``.
        best_run: the adapted run whose best epoch was judged best (over seeds); None
            when no method ran.
    """
    if any(c.unadapted for c in evidence.candidates):
        return rule.decide(evidence), rule.name
    assert best_run is not None
    if asked is not None and evidence.labels is None:
        statement = (
            f"kept {asked} as asked, not compared with the unadapted model (no validation "
            "labels; not measured: run validate)"
        )
        return Decision(best_run, "label-free", statement), AS_ASKED
    statement = (
        f"kept {best_run.method}: the target's classes differ from the source model's, so "
        "the unadapted model cannot be compared with it (not measured: run validate)"
    )
    return Decision(best_run, "label-free", statement), ONLY_CANDIDATE
