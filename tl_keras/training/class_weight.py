"""`class_weight = "balanced"`: every class weighs the same in the training loss.

On a 50:1 data set the large class makes up nearly all of the loss, so a model can learn to
ignore the small one and still score a high accuracy. With "balanced", each training image's
loss is weighted by `n / (K * n_c)` (scikit-learn's "balanced": n images, K classes, n_c images
of its class), so the mean weight per image stays 1 and every class adds the same total weight.
Keras applies the weights (`fit(class_weight=...)`, by each batch's one-hot targets) to the
training loss only: validation figures stay unweighted. Plain numpy, no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from tl_keras.errors import DataError

CLASS_WEIGHTS = ("none", "balanced")  # the names config.class_weight accepts


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """`n / (K * n_c)` per class (scikit-learn's "balanced"): each class weighs the same in all.

    K counts the classes that have images, so the mean weight per image stays 1; a class with
    no images gets weight 0 (it contributes no loss anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = int((counts > 0).sum())
    n = counts.sum()
    return {c: (float(n / (present * counts[c])) if counts[c] else 0.0) for c in range(num_classes)}


def class_weights(
    mode: str, labels: np.ndarray | None, num_classes: int
) -> dict[int, float] | None:
    """The weights `fit` gets for a `class_weight` setting (None: unweighted).

    Raises:
      DataError: "balanced" for data whose training labels are not known in advance.
    """
    if mode == "none":
        return None
    if labels is None:
        raise DataError(
            'class_weight="balanced" needs the training labels up front; this data bundle was '
            "built without them (pass data from tl_keras.data, or class_weight='none')"
        )
    return balanced_class_weights(labels, num_classes)


__all__ = ["CLASS_WEIGHTS", "balanced_class_weights", "class_weights"]
