"""Plain words about a training run that went wrong, and what usually causes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def diagnose(history: Sequence[Mapping[str, float | None]], selection_metric: str) -> list[str]:
    """Problems visible in the per-epoch history, each with its likely causes.

    Args:
        history: one mapping per epoch with train_loss, val_loss and val_auroc.
        selection_metric: "auroc" or "loss", what picked the best epoch.

    Example:
        >>> history = [{"train_loss": 0.7 - 0.1 * e, "val_loss": 0.6 + 0.1 * e, "val_auroc": 0.7}
        ...            for e in range(5)]
        >>> print(diagnose(history, "loss")[0][:60])
        validation loss rose for 4 epochs in a row while training lo
    """
    notes: list[str] = []
    if not history:
        return notes
    if any(h.get("val_loss") is None for h in history):
        return notes  # no labels on the validation split: nothing here to judge by
    train = [h["train_loss"] for h in history]
    val = [h["val_loss"] for h in history]
    rising = longest_rise(val, train)
    if rising >= 3:
        notes.append(
            f"validation loss rose for {rising} epochs in a row while training loss fell: the "
            "model is overfitting. Likely causes: too little training data, augmentation too "
            "weak, too many epochs or too little weight decay. The best epoch is kept."
        )
    key = "val_auroc" if selection_metric == "auroc" else "val_loss"
    values = [h.get(key) for h in history]
    if any(v is None for v in values):
        notes.append(
            "AUROC could not be measured on the validation split: it holds one class only. "
            "More patients, or a larger validation fraction, are needed."
        )
    elif len(values) >= 3:
        better = (max if key == "val_auroc" else min)(values)
        if values.index(better) == 0:
            notes.append(
                f"the validation {selection_metric} never improved after the first epoch. "
                "Likely causes: a learning rate too high (try a tenth), a validation split "
                "too small to measure a change, or labels the patches cannot show."
            )
    if len(train) >= 3 and train[-1] > 0.95 * train[0]:
        notes.append(
            "training loss barely fell: the learning rate may be too low, or the patches do "
            "not show what the labels depend on (check the HU window and the patch size)."
        )
    return notes


def longest_rise(val: Sequence[float], train: Sequence[float]) -> int:
    """The longest run of epochs where validation loss rose while training loss fell."""
    longest = current = 0
    for i in range(1, len(val)):
        if val[i] > val[i - 1] and train[i] < train[i - 1]:
            current += 1
            longest = max(longest, current)
        else:
            current = 0
    return longest
