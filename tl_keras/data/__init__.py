"""The data: from a source users name to batches the model trains on.

    settings.py    the data section of a run: `DataSettings` (where the data comes from, how
                   each image is read) and `Augmentation` (what training batches get); no
                   TensorFlow
    sources/       one reader per kind of source (image folders, TFDS, arrays and .npz, the
                   synthetic shapes) and `load`, which dispatches; `load_data(config)` and
                   `from_arrays(...)` start here
    images.py      a split before decoding (file lists, labels, indices: never the pixels), how
                   an image is loaded, each epoch's order and each worker's part of it
    tfds_stream.py a TFDS split streamed from its shard files; its labels and decode check
                   remembered
    check.py       the decode check (parallel, with progress, remembered), the caches, and the
                   refusal of a memory cache that would not fit
    pipeline.py    the `Pipeline` (how images become batches) and the datasets it builds: a
                   split in order, or each epoch's batches, a pure function of (seed, epoch)
    bundle.py      split, check, and assemble the `DataBundle` a run trains on
    changes.py     image files that changed while a run read them, named when a read fails
    augment.py     training-only augmentation presets, MixUp / CutMix, label smoothing

The data layer imports neither `tl_keras.config` nor training: it takes its own section.
Nothing here is imported eagerly, so `tl_keras.data.augment` stays TensorFlow-free.
"""
