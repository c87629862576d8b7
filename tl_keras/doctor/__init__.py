"""The data doctor: what a data set's pretrained features say about the data before training.

`tl_keras.doctor.analysis` holds the checks (duplicates and leakage across splits, likely label
errors, class balance, outliers) as pure numpy functions over arrays, and `diagnose`, which runs
them all and returns a JSON-serialisable report; `tl_keras.doctor.probe` is the numpy linear
probe it asks for out-of-fold opinions. Neither imports TensorFlow: the caller computes the
features (the frozen base's pooled output, cached once per data set) and hands them in.
"""
