"""The data: from a source users name to batches the model trains on.

    sources.py     image folders, TensorFlow Datasets, arrays (.npz or in memory), the synthetic
                   shapes; `load_data(config)` and `from_arrays(...)` start here
    pipeline.py    decode every image once (skipping unreadable files), cache, split, and each
                   epoch's batches, a pure function of (seed, epoch): the `DataBundle`
    changes.py     image files that changed while a run read them, named when a read fails
    augment.py     training-only augmentation presets, MixUp / CutMix, label smoothing
    synthetic.py   the three-class shapes data set the quickstart draws itself

Nothing here is imported eagerly, so `tl_keras.data.augment` stays TensorFlow-free.
"""
