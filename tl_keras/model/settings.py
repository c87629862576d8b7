"""The model section of a run: which classifier to build, checked and worked out once.

A frozen value, validated when made (`ModelSettings.make`: the backbone's name, width and input
size, the head), importing no TensorFlow, so `tl_keras.config` composes and checks it in
milliseconds. Nothing in it is left to the recipe: a run builds its model from it before the
recipe card exists (the card's facts are measured on that model).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from tl_keras.errors import refused
from tl_keras.model import backbones
from tl_keras.recipe import BN_POLICIES

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The classifier a run trains (see `Config` for each field's meaning).

    Attributes:
      backbone: the backbone's registry entry.
      image_size: the square input size in pixels (the backbone's own when the config says 0).
      weights: 'imagenet', None (random initialisation) or the path of a weights file.
      alpha: the width multiplier (MobileNet families; 1.0 otherwise).
      head_units: width of the head's hidden Dense layer; 0 = none.
      dropout: dropout rate before the classifier.
      bn_policy: 'frozen' or 'train' (BatchNormalization layers of an unfrozen base).
      seed: seed of the head's initialisation and dropout.
    """

    backbone: backbones.BackboneSpec
    image_size: int
    weights: str | None
    alpha: float
    head_units: int
    dropout: float
    bn_policy: str
    seed: int

    @classmethod
    def make(
        cls,
        *,
        backbone: str,
        alpha: float,
        weights: str,
        image_size: int,
        head_units: int,
        dropout: float,
        bn_policy: str,
        seed: int,
    ) -> ModelSettings:
        """Checks the model's fields and works out the backbone entry and the input size.

        Raises:
          BackboneError: an unknown backbone, or a width or size it cannot take.
          ConfigError: a head or BatchNorm setting out of range, naming what is allowed.
        """
        spec = backbones.get(backbone)  # raises BackboneError listing the names
        backbones.check_alpha(spec, alpha, weights)
        size = backbones.input_size(spec, image_size)
        backbones.check_image_size(spec, size)
        if image_size < 0:
            raise refused(
                "image_size", image_size, "use 0 (the backbone's default) or a size in pixels"
            )
        if head_units < 0:
            raise refused("head_units", head_units, "use 0 (no hidden layer) or a positive width")
        if not 0.0 <= dropout < 1.0:
            raise refused("dropout", dropout, "use a rate in [0, 1)")
        if bn_policy not in BN_POLICIES:
            raise refused("bn_policy", bn_policy, f"one of {', '.join(BN_POLICIES)}")
        return cls(
            spec,
            size,
            backbones.normalize_weights(weights),
            alpha,
            head_units,
            dropout,
            bn_policy,
            seed,
        )

    @property
    def identity(self) -> dict[str, Any]:
        """What a saved model is, as `run.json` records it (its resolved backbone, size and
        weights)."""
        return {
            "backbone": self.backbone.name,
            "alpha": self.alpha,
            "image_size": self.image_size,
            "head_units": self.head_units,
            "dropout": self.dropout,
            "weights": self.weights,
        }

    def build(self, num_classes: int) -> keras.Model:
        """The classifier, base frozen (`tl_keras.model.classifier.build_model`)."""
        from tl_keras.model.classifier import build_model

        return build_model(
            self.backbone,
            num_classes,
            image_size=self.image_size,
            weights=self.weights,
            alpha=self.alpha,
            head_units=self.head_units,
            dropout=self.dropout,
            seed=self.seed,
        )
