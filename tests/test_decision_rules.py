"""The decision rules on constructed candidates: what each keeps, and what it says."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt.engine import Candidate, ComponentKind, Evidence, hookimpl
from medadapt.engine.contracts.components import UNADAPTED, Decision, DecisionRule
from medadapt.engine.contracts.host import PluginHost, get_plugin_host
from medadapt.plugins.decision_rules import (
    AgreementGuard,
    BestValidationAuroc,
    EnsembleAgreement,
    ValidationBootstrap,
)

PATIENTS = 40
#: Two lesions per patient, one benign and one malignant.
LABELS = np.array([0, 1] * PATIENTS)
PATIENT_OF = tuple(f"patient-{i // 2}" for i in range(2 * PATIENTS))


def scores(quality: float, seed: int) -> np.ndarray:
    """Probabilities whose malignant column separates the classes by ``quality``."""
    rng = np.random.default_rng(seed)
    positive = np.clip(0.5 + quality * (LABELS - 0.5) + rng.normal(0, 0.25, len(LABELS)), 0, 1)
    return np.stack([1 - positive, positive], axis=1)


def evidence(*candidates: tuple[str, np.ndarray], labels: np.ndarray | None = LABELS) -> Evidence:
    return Evidence(
        tuple(Candidate(name, 0, p) for name, p in candidates), PATIENT_OF, labels, 1, seed=0
    )


# --- with labels --------------------------------------------------------------------------


def test_an_adapted_model_worse_on_the_validation_labels_is_never_kept():
    unadapted = scores(0.6, 1)
    for seed in range(10):
        worse = scores(0.2, 100 + seed)
        decision = ValidationBootstrap().decide(evidence((UNADAPTED, unadapted), ("coral", worse)))
        assert decision.kept.unadapted
        assert decision.margin["value"] < 0
        assert (
            BestValidationAuroc()
            .decide(evidence((UNADAPTED, unadapted), ("coral", worse)))
            .kept.unadapted
        )


def test_a_tie_keeps_the_unadapted_model():
    same = scores(0.5, 1)
    for rule in (ValidationBootstrap(), BestValidationAuroc()):
        decision = rule.decide(evidence((UNADAPTED, same), ("coral", same.copy())))
        assert decision.kept.unadapted
        assert decision.evidence == "labels"


def test_a_clearly_better_model_is_kept_with_its_margin_and_interval():
    decision = ValidationBootstrap().decide(
        evidence((UNADAPTED, scores(0.1, 1)), ("coral", scores(0.9, 2)), ("mmd", scores(0.7, 3)))
    )
    assert decision.kept.method == "coral"
    margin = decision.margin
    assert margin["low"] > 0
    assert margin["low"] <= margin["value"] <= margin["high"]
    assert margin["patients"] == PATIENTS
    assert margin["level"] == 0.80
    assert decision.statement.startswith(f"kept coral: validation AUROC +{margin['value']:.3f} (")
    assert f"on {PATIENTS} labelled patients" in decision.statement


def test_a_small_gain_that_the_bootstrap_does_not_support_keeps_the_unadapted_model():
    # A better point estimate on 40 patients (+0.016), by less than the interval's width.
    unadapted, slightly = scores(0.5, 1), scores(0.6, 4)
    decision = ValidationBootstrap().decide(evidence((UNADAPTED, unadapted), ("coral", slightly)))
    assert decision.margin["value"] > 0
    assert decision.margin["low"] <= 0
    assert decision.kept.unadapted
    assert "does not clear the margin 0.01" in decision.statement
    assert (
        BestValidationAuroc()
        .decide(evidence((UNADAPTED, unadapted), ("coral", slightly)))
        .kept.method
        == "coral"
    )


def test_the_margin_is_the_profiles_to_set():
    candidates = ((UNADAPTED, scores(0.3, 1)), ("coral", scores(0.6, 2)))
    loose = ValidationBootstrap().decide(evidence(*candidates))
    strict = ValidationBootstrap.from_params({"margin": 0.5}).decide(evidence(*candidates))
    assert loose.kept.method == "coral"
    assert strict.kept.unadapted
    assert "margin 0.50" in strict.statement


def test_labels_of_one_class_keep_the_unadapted_model_and_say_why():
    decision = ValidationBootstrap().decide(
        evidence((UNADAPTED, scores(0.1, 1)), ("coral", scores(0.9, 2)), labels=LABELS * 0)
    )
    assert decision.kept.unadapted
    assert "one class only" in decision.statement


def test_unlabelled_samples_are_left_out_of_the_labelled_comparison():
    labels = LABELS.copy()
    labels[:PATIENTS] = -1  # the first half of the patients are unlabelled
    decision = ValidationBootstrap().decide(
        evidence((UNADAPTED, scores(0.1, 1)), ("coral", scores(0.9, 2)), labels=labels)
    )
    assert decision.margin["patients"] == PATIENTS // 2


# --- without labels -----------------------------------------------------------------------


def disagreeing(seed: int) -> Evidence:
    """Two adapted models that predict at random: they disagree with each other and with
    the unadapted model, so which one agrees most with the rest is noise."""
    return evidence(
        (UNADAPTED, scores(0.5, seed)),
        ("tent", scores(0.0, seed + 1)),
        ("coral", scores(0.0, seed + 2)),
        labels=None,
    )


def test_label_free_disagreement_keeps_the_unadapted_model():
    decision = AgreementGuard().decide(disagreeing(0))
    # tent agrees most with the others (0.49 against 0.41), but the candidates disagree.
    assert decision.figures["tent"]["agreement"] > decision.figures[UNADAPTED]["agreement"]
    assert decision.kept.unadapted
    assert decision.evidence == "label-free"
    assert decision.margin is None
    assert decision.statement.startswith(
        "kept the unadapted model as a label-free proposal (not measured; run validate): the "
        "candidates disagree; tent, which agrees most with the others, matches their mean "
        "prediction on only 0.487 of 80 validation samples, below 0.80"
    )
    assert EnsembleAgreement().decide(disagreeing(0)).kept.method == "tent"


def test_a_proposal_that_is_not_stable_under_the_bootstrap_keeps_the_unadapted_model():
    # Without the consensus check, the bootstrap of the patients still refuses tent.
    decision = AgreementGuard.from_params({"consensus": 0.0}).decide(disagreeing(0))
    assert decision.kept.unadapted
    assert decision.figures["tent"]["bootstrap_wins"] < 0.99
    assert "agrees most with the other candidates" in decision.statement
    assert "short of 99%" in decision.statement


def test_two_camps_of_candidates_keep_the_unadapted_model_where_ensv_does_not():
    # As on a development seed of the head pair: two adapted models predict one way, the
    # unadapted model and two others the other way, and one model calls everything
    # positive. EnsV's winner matches the others' mean on about 0.6 of the samples.
    good = scores(0.8, 5)
    flipped = good[:, ::-1]
    rng = np.random.default_rng(6)
    mixed = np.where(rng.random((len(LABELS), 1)) < 0.5, good, flipped)
    everything = np.tile([0.01, 0.99], (len(LABELS), 1))
    candidates = evidence(
        (UNADAPTED, good),
        ("adabn", scores(0.8, 7)),
        ("tent", mixed),
        ("coral", flipped),
        ("dann", flipped.copy()),
        ("shot", everything),
        labels=None,
    )
    bare = EnsembleAgreement().decide(candidates)
    guarded = AgreementGuard().decide(candidates)
    assert not bare.kept.unadapted
    assert bare.figures[bare.kept.method]["agreement"] < 0.80
    assert guarded.kept.unadapted
    assert "the candidates disagree" in guarded.statement


def test_the_guard_keeps_the_unadapted_model_on_most_disagreements_the_bare_rule_does_not():
    seeds = range(0, 60, 3)
    guarded = [AgreementGuard().decide(disagreeing(s)).kept.unadapted for s in seeds]
    bare = [EnsembleAgreement().decide(disagreeing(s)).kept.unadapted for s in seeds]
    assert sum(guarded) >= 0.75 * len(guarded)
    assert sum(bare) <= 0.5 * len(bare)


def test_label_free_consensus_against_the_unadapted_model_is_proposed():
    # The adapted models agree with each other; the unadapted model predicts the opposite.
    good = scores(0.8, 2)
    decision = AgreementGuard().decide(
        evidence(
            (UNADAPTED, good[:, ::-1]),
            ("coral", good),
            ("mmd", scores(0.8, 3)),
            ("adabn", scores(0.8, 4)),
            labels=None,
        )
    )
    assert not decision.kept.unadapted
    assert decision.statement.startswith(f"kept {decision.kept.method} as a label-free proposal")
    assert decision.figures[decision.kept.method]["bootstrap_wins"] >= 0.99


def test_a_decision_repeats_exactly():
    candidates = ((UNADAPTED, scores(0.4, 1)), ("coral", scores(0.6, 2)))
    first = ValidationBootstrap().decide(evidence(*candidates))
    assert ValidationBootstrap().decide(evidence(*candidates)) == first


# --- a plugin kind ------------------------------------------------------------------------


class AlwaysUnadapted(DecisionRule):
    """Never adapt."""

    name = "always-unadapted"
    needs_labels = False

    def decide(self, evidence: Evidence) -> Decision:
        return Decision(evidence.unadapted, "label-free", "kept the unadapted model by policy")


class ThirdParty:
    @hookimpl
    def medadapt_decision_rules(self):
        return [AlwaysUnadapted]


def test_the_built_in_rules_are_registered_like_any_plugins():
    registry = get_plugin_host().registry()
    assert set(registry.names(ComponentKind.DECISION_RULES)) >= {
        "validation-bootstrap",
        "agreement-guard",
        "best-validation-auroc",
        "ensemble-agreement",
    }
    assert registry.provider(ComponentKind.DECISION_RULES, "agreement-guard") == "decision-rules"


def test_a_third_party_rule_is_found_and_used_by_the_decision(tmp_path):
    from medadapt.engine.adaptation.decision import decide, decision_rule
    from medadapt.engine.profile import AdaptationChoice, DecisionChoice, Profile

    host = PluginHost()
    host.load_entry_points()
    host.register(ThirdParty(), "third-party")
    try:
        registry = host.registry()
        profile = Profile.model_construct(
            adaptation=AdaptationChoice(decision=DecisionChoice(rule="always-unadapted")),
            base_dir=tmp_path,
            site=type("S", (), {"name": "B"})(),
        )
        rule = decision_rule(profile, registry, validation_labelled=False)
        assert isinstance(rule, AlwaysUnadapted)
        found = evidence((UNADAPTED, scores(0.1, 1)), ("coral", scores(0.9, 2)), labels=None)
        decision, decided_by = decide(rule, found, None, None)
        assert decision.kept.unadapted
        assert decided_by == "always-unadapted"
    finally:
        host.unregister("third-party")


@pytest.mark.parametrize("name", ["validation-bootstrap", "best-validation-auroc"])
def test_a_rule_that_needs_labels_refuses_a_site_without_them(name, tmp_path):
    from medadapt.engine import InvalidInputError
    from medadapt.engine.adaptation.decision import decision_rule
    from medadapt.engine.profile import AdaptationChoice, DecisionChoice, Profile

    profile = Profile.model_construct(
        adaptation=AdaptationChoice(decision=DecisionChoice(rule=name)),
        base_dir=tmp_path,
        site=type("S", (), {"name": "Hospital B"})(),
    )
    with pytest.raises(InvalidInputError, match="needs labelled validation patients"):
        decision_rule(profile, get_plugin_host().registry(), validation_labelled=False)
