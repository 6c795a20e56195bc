"""A selection score that prefers models whose positive rate matches the site's prevalence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import SelectionScore, hookimpl


class PrevalenceMatch(SelectionScore):
    """How close the mean predicted probability of the positive class is to the expected
    prevalence: 0 is a perfect match, more negative is worse.

    A model that drifted at a new site often calls far more (or far fewer) patients
    positive than the site's known prevalence; this score catches that without labels.
    """

    name = "prevalence-match"
    higher_is_better = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        expected_prevalence: float = Field(
            gt=0.0, lt=1.0, description="share of positive cases expected at this site"
        )
        positive_class_index: int = Field(
            default=1, ge=0, description="column of the positive class in the predictions"
        )

    def score(self, probabilities: np.ndarray, features: np.ndarray | None = None) -> float:
        """Minus the gap between predicted and expected prevalence.

        Example:
            >>> PrevalenceMatch.from_params({"expected_prevalence": 0.25}).score(
            ...     np.array([[0.5, 0.5], [1.0, 0.0]])
            ... )
            0.0
        """
        p = np.asarray(probabilities, dtype=np.float64)
        column = self.params.positive_class_index
        if p.ndim != 2 or column >= p.shape[1]:
            raise ValueError(
                f"positive_class_index {column} needs predictions of shape (samples, classes) "
                f"with more than {column} classes, got shape {p.shape}"
            )
        return -abs(float(p[:, column].mean()) - self.params.expected_prevalence)


@hookimpl
def medadapt_selection_scores() -> Sequence[type[SelectionScore]]:
    return [PrevalenceMatch]
