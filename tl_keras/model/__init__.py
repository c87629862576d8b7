"""The model: which backbones exist and how the classifier is built on one.

    settings.py     the model section of a run's settings: `ModelSettings`, checked, without
                    TensorFlow
    backbones.py    the registry users name (`--backbone`): sizes, preprocessing, widths, blocks;
                    plain data, importable without TensorFlow
    classifier.py   the classifier (preprocessing, base, head), what trains (`set_trainable`,
                    BatchNorm frozen), BatchNorm calibration of a random base, dropout RNG state
    forward.py      the one forward pass of a model over a data set, batch by batch
    fold.py         BatchNormalization folded into the convolution before it, for the passes
                    whose outputs train something (cached features, a frozen bottom's outputs)
    served.py       how a trained model answers: TTA, then the temperature as a layer

Nothing here is imported eagerly, so `tl_keras.model.backbones` and `.settings` stay
TensorFlow-free.
"""
