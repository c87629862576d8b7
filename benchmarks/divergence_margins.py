"""How far normal runs on the shared flowers stay from the divergence guard's thresholds.

    python benchmarks/divergence_margins.py        # needs ../shared; about 5 minutes on 2 cores

Trains `configs/flowers.toml` (real ImageNet MobileNet-0.25, 5 classes) as it is, and with a
2-epoch warm-up, a cosine schedule and the whole base unfrozen in `ft`, recording at every
epoch's end what `NonFiniteGuard` looks at: the epoch loss (its limit: 100 x ln 5 = 161), how
many epochs in a row it rose, and how much the largest trained weight grew since the phase
began (its limit: 1000-fold). Prints one line per run.
"""

from __future__ import annotations

import math
import sys
import tempfile

import _common
import keras

from tl_keras import config as config_lib
from tl_keras.training import callbacks as guard
from tl_keras.training.runner import train

RUNS = {
    "flowers.toml": {},
    "warm-up, cosine, all unfrozen": {
        "lr_schedule": "cosine",
        "warmup_epochs": 2,
        "epochs_fe": 4,
        "epochs_ft": 4,
        "unfreeze": "all",
    },
}


class Watch(keras.callbacks.Callback):
    """The epoch losses and the largest trained weight, at the start and each epoch's end."""

    def __init__(self):
        super().__init__()
        self.losses, self.growth = [], []

    def _largest(self) -> float:
        return max(float(keras.ops.max(keras.ops.abs(w))) for w in self.model.trainable_weights)

    def on_train_begin(self, logs=None):
        self.start = self._largest()

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(float(logs["loss"]))
        self.growth.append(self._largest() / self.start)


def longest_rise(losses: list[float]) -> int:
    best = run = 0
    for a, b in zip(losses, losses[1:], strict=False):
        run = run + 1 if b > a else 0
        best = max(best, run)
    return best


def main() -> int:
    if not _common.FLOWERS.is_dir():
        sys.exit(f"needs the shared flowers at {_common.FLOWERS}")
    limit = guard.DIVERGED_LOSS_TIMES_CHANCE * math.log(5)
    for name, overrides in RUNS.items():
        values = config_lib.load_file(str(_common.REPO / "configs" / "flowers.toml"))
        values.update(data_dir=str(_common.FLOWERS), weights=str(_common.WEIGHTS), progress="lines")
        cfg = config_lib.replace(config_lib.Config(), {**values, **overrides})
        watch = Watch()
        with tempfile.TemporaryDirectory() as workdir:
            train(cfg, workdir, callbacks=[watch])
        print(
            f"{name}: largest epoch loss {max(watch.losses):.3g} (limit {limit:.3g}); "
            f"longest rise {longest_rise(watch.losses)} epoch(s) (limit {guard.GROWING_EPOCHS}); "
            f"largest weight growth {max(watch.growth):.3g}x (limit {guard.EXPLODED_WEIGHTS:g}x)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
