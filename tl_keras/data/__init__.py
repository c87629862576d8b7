"""The data: from a source users name to batches the model trains on.

    sources.py     image folders, TensorFlow Datasets, arrays (.npz or in memory), the synthetic
                   shapes; `load_data(config)` and `from_arrays(...)` start here
    images.py      a split before decoding (file lists, labels, indices: never the pixels), how
                   an image is loaded, each epoch's order and each worker's part of it
    tfds_stream.py a TFDS split streamed from its shard files; its labels and decode check
                   remembered
    check.py       the decode check (parallel, with progress, remembered), the caches, and the
                   refusal of a memory cache that would not fit
    pipeline.py    split, check, and each epoch's batches, a pure function of (seed, epoch):
                   the `DataBundle`
    changes.py     image files that changed while a run read them, named when a read fails
    augment.py     training-only augmentation presets, MixUp / CutMix, label smoothing
    synthetic.py   the three-class shapes data set the quickstart draws itself

Nothing here is imported eagerly, so `tl_keras.data.augment` stays TensorFlow-free.
"""
