"""Prints the memory footprint table of `tl_keras.model.backbones` (`_FOOTPRINT`).

    python benchmarks/backbone_footprint.py            # every backbone, tiny too (a minute)
    python benchmarks/backbone_footprint.py mobilenet  # some

Builds each base at 224 px, width 1.0, without weights, and measures from its layers' output
shapes: the largest layer output and the sum of all of them, in float32 values per input pixel,
and the parameter count. `memory_estimate` scales them to an image size, batch and width.
"""

from __future__ import annotations

import sys

import _common  # noqa: F401  (the repository on sys.path)
import numpy as np

from tl_keras.model import backbones

SIZE = 224


def footprint(name: str) -> tuple[float, float, int]:
    """(largest layer output, sum of layer outputs) per input pixel, and parameters."""
    base = backbones.build_base(backbones.get(name), image_size=SIZE, weights=None, alpha=1.0)
    sizes = []
    for layer in base.layers:
        outputs = layer.output if isinstance(layer.output, list) else [layer.output]
        sizes += [int(np.prod(o.shape[1:])) for o in outputs]
    return max(sizes) / SIZE**2, sum(sizes) / SIZE**2, base.count_params()


def main(argv: list[str]) -> int:
    for name in argv[1:] or [*backbones.names(), *backbones.UNLISTED]:
        peak, total, params = footprint(name)
        print(f'    "{name}": ({peak:.2f}, {total:.1f}, {params}),', flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
