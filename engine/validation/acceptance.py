"""The acceptance gate: each of the profile's criteria judged on the measured figures, and the
warnings where the figures are fragile or the decision rests on less than it seems.

Both read only report.json's dictionary (built by engine/validation/job.py), so anyone can
judge a report again from its JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medadapt.engine.profile import Profile

#: Verdicts of the acceptance gate.
PASS, FAIL, NO_VERDICT = "pass", "fail", "no verdict"
NOT_MEASURED = "not measured"


def judge(profile: Profile, report: Mapping[str, Any], baseline: bool = False) -> dict[str, Any]:
    """Each declared criterion, PASS or FAIL with its margin, and the verdict.

    With ``acceptance.judge_on: lower_bound`` (the default) a criterion is judged on the
    side of its confidence interval that must clear it: the lower bound for a minimum, the
    upper bound for a maximum; with ``point``, on the estimate, and a criterion whose
    interval reaches past the requirement says so (``crosses``). Non-inferiority is judged
    on the lower bound of the paired difference's interval either way: that is what it
    means. A criterion that cannot be measured (no baseline, a rate without cases, no
    interval to judge on) is "not measured", and then, as with too few test patients, the
    verdict is "no verdict": never a pass. ``baseline``: judge the baseline model by the
    same criteria, less non-inferiority (a comparison with itself).
    """
    gate = profile.acceptance
    measured = report["results"]["model"]
    comparison = report.get("comparison")
    difference = None if comparison is None else comparison["auroc_difference"]
    # (name, wording, threshold, estimate with interval, whether higher is better)
    declared = [
        ("min_auroc", "AUROC at least {:g}", gate.min_auroc, measured.get("auroc"), True),
        ("min_sensitivity", "sensitivity at the operating point at least {:g}",
         gate.min_sensitivity, measured.get("sensitivity"), True),
        ("min_specificity", "specificity at the operating point at least {:g}",
         gate.min_specificity, measured.get("specificity"), True),
        ("max_calibration_error", "expected calibration error at most {:g}",
         gate.max_calibration_error, measured.get("calibration_error"), False),
        ("non_inferiority_margin", "AUROC not worse than the baseline's by {:g} or more "
         "(lower bound of the difference)", gate.non_inferiority_margin, difference, True),
    ]  # fmt: skip
    criteria = []
    for name, wording, threshold, estimate, higher in declared:
        if threshold is None or (baseline and name == "non_inferiority_margin"):
            continue
        estimate = estimate or {}
        point, low, high = estimate.get("value"), estimate.get("low"), estimate.get("high")
        # Non-inferiority: the difference must stay above minus the margin.
        required = -threshold if name == "non_inferiority_margin" else threshold
        bound = low if higher else high  # the side of the interval that must clear it
        if name == "non_inferiority_margin":
            judged_on, value = "lower_bound", low
        elif gate.judge_on == "lower_bound":
            judged_on, value = "lower_bound" if higher else "upper_bound", bound
        else:
            judged_on, value = "point", point
        margin = None if value is None else (value - required if higher else required - value)
        status = NOT_MEASURED if margin is None else (PASS if margin >= 0 else FAIL)
        crosses = bound is not None and (bound < required if higher else bound > required)
        criteria.append(
            {
                "name": name,
                "criterion": wording.format(threshold),
                "required": required,
                "measured": value,
                "judged_on": judged_on,
                "estimate": point,
                "low": low,
                "high": high,
                "margin": margin,
                "status": status,
                "crosses": bool(status == PASS and crosses),
            }
        )
    patients = report["data"]["patients"]["test"]
    reasons = []
    if patients < gate.min_test_patients:
        reasons.append(
            f"only {patients} test patients; the profile asks for at least "
            f"{gate.min_test_patients} before judging"
        )
    unmeasured = [c["name"] for c in criteria if c["status"] == NOT_MEASURED]
    if unmeasured:
        reasons.append("not measured: " + ", ".join(unmeasured))
    if reasons:
        verdict = NO_VERDICT
    else:
        verdict = PASS if all(c["status"] == PASS for c in criteria) else FAIL
    crossing = [c for c in criteria if c["crosses"]]
    caveat = None
    if verdict == PASS and crossing:
        caveat = "passes on the estimate; " + "; ".join(_crossing_text(c) for c in crossing)
    return {
        "verdict": verdict,
        "judge_on": gate.judge_on,
        "criteria": criteria,
        "no_verdict_because": reasons,
        "caveat": caveat,
    }


#: Below or above these, an operating threshold sits where the probabilities are squeezed.
EXTREME_THRESHOLD = (0.05, 0.95)
#: A calibration error above this (or the profile's own limit) is worth a warning.
CALIBRATION_WARNING = 0.1


def warnings(report: Mapping[str, Any], profile: Profile) -> list[dict[str, str]]:
    """Where the report's numbers are fragile or the decision rests on less than it seems,
    each with what to do: in the report, its JSON and the summaries."""
    found = []
    model = report["results"]["model"]
    threshold = model["threshold"]
    low, high = EXTREME_THRESHOLD
    if threshold is not None and not low <= threshold <= high:
        found.append({
            "kind": "extreme_threshold",
            "text": f"The operating threshold is {threshold:.3f}, at the edge of the "
            "probability scale: the model's probabilities are squeezed there, so a small "
            "change in them (another scanner, another week) moves many patients across it.",
            "advice": "Recalibrate (report.recalibrate: true shows the effect) and label "
            "more validation patients, so that the threshold rests on more cases.",
        })  # fmt: skip
    calibration = model["calibration_error"]["value"]
    limit = profile.acceptance.max_calibration_error
    limit = CALIBRATION_WARNING if limit is None else min(limit, CALIBRATION_WARNING)
    if calibration is not None and calibration > limit:
        found.append({
            "kind": "calibration",
            "text": f"The calibration error is {calibration:.3f}, above {limit:g}: the "
            "model's probabilities do not mean what they say (a 70% is not right 70% of "
            "the time).",
            "advice": "Read the probabilities as a ranking only, or recalibrate on this "
            "site's validation patients (report.recalibrate: true) before showing them.",
        })  # fmt: skip
    base = report.get("baseline_acceptance")
    if base and base["verdict"] == FAIL:
        failed = [c["criterion"] for c in base["criteria"] if c["status"] == FAIL]
        found.append({
            "kind": "baseline_fails",
            "text": "The baseline (the unadapted model) also fails the criteria: "
            + "; ".join(failed) + ".",
            "advice": "A criterion the baseline cannot reach either may be out of reach at "
            "this site, or the site's data may be hard: look at the data section and the "
            "errors before tightening or loosening the criteria.",
        })  # fmt: skip
    small = [g for g in report["subgroups"] if g["too_small"]]
    if small:
        groups = ", ".join(
            f"{g['attribute'].replace('_', ' ')} {g['value']} ({g['patients']} patients)"
            for g in small
        )
        found.append({
            "kind": "small_subgroups",
            "text": f"Some subgroups are too small to judge: {groups}.",
            "advice": "Label more test patients from these groups before relying on the "
            "model for them.",
        })  # fmt: skip
    adaptation = report["models"]["model"]["adaptation"]
    decision = (adaptation or {}).get("decision")
    if decision and decision.get("evidence") == "label-free":
        found.append({
            "kind": "label_free_choice",
            "text": "The model was chosen without labels: adapt's choice of "
            f"{adaptation['method']} was a label-free proposal, and this report is its "
            "first measurement.",
            "advice": "Label this site's validation patients (adaptation.target_labels: "
            "validation) and run adapt again, so that labels choose the model and this "
            "report confirms the choice rather than making it.",
        })  # fmt: skip
    return found


def criterion_text(criterion: Mapping[str, Any]) -> str:
    """One criterion in a line: 'AUROC at least 0.85: 0.978 (0.941 to 1.000), judged on the
    lower bound 0.941, margin +0.091' (the CLI's and the demo's summaries)."""
    estimate, low, high = criterion["estimate"], criterion["low"], criterion["high"]
    text = f"{criterion['criterion']}: "
    if estimate is None and criterion["measured"] is None:
        return text + "not measured"
    if estimate is not None:
        text += f"{estimate:.3f}"
        if low is not None and high is not None:
            text += f" ({low:.3f} to {high:.3f})"
        text += ", "
    judged = criterion["judged_on"].replace("_", " ")
    measured = criterion["measured"]
    if criterion["judged_on"] == "point":
        text += "judged on the estimate"
    else:
        text += f"judged on the {judged} " + ("n/a" if measured is None else f"{measured:.3f}")
    margin = criterion["margin"]
    if margin is not None:
        text += f", {'short by' if margin < 0 else 'margin'} {abs(margin):.3f}"
    if criterion["crosses"]:
        text += " (the interval crosses)"
    return text


def _crossing_text(criterion: Mapping[str, Any]) -> str:
    """'the interval of AUROC reaches below 0.85', for a criterion passed on its estimate."""
    what = criterion["criterion"].split(" at least ")[0].split(" at most ")[0]
    higher = criterion["judged_on"] != "upper_bound" and not criterion["name"].startswith("max_")
    side = "below" if higher else "above"
    edge = criterion["low"] if higher else criterion["high"]
    return f"the interval of {what} reaches {side} {criterion['required']:g} (to {edge:.3f})"
