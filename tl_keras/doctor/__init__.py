"""The data doctor: what a data set's pretrained features say about the data before training.

    analysis.py      the checks (duplicates and leakage across splits, likely label errors,
                     class balance, outliers) as pure numpy over arrays, and `diagnose`, which
                     runs them all into a JSON-serialisable report (no TensorFlow)
    neighbours.py    hashes, nearest neighbours (in blocks) and duplicate groups (numpy)
    thresholds.py    every threshold the checks apply (`Thresholds`), a leaf both read
    linear_probe.py  the numpy linear probe `diagnose` asks for out-of-fold opinions
    workflow.py      the doctor on a real data set: content hashes, the frozen base's features
                     of train, val and test (cached, never stale), `diagnose`; `doctor_workdir`
                     (the command) and `examine` (the step `train` runs before the first phase)
    report.py        report.md and thumbnails.png beside report.json
    __main__.py      python -m tl_keras.doctor (the command is tl_keras.cli.doctor)

Importing this package imports neither TensorFlow nor the modules above.
"""

# config.doctor, before training: "auto" = what must be known before training (duplicates and
# leakage across splits, class balance), label errors and outliers left to
# `python -m tl_keras.doctor`; "full" = every check; "off" = none. Its one home: the runner acts
# on it (`workflow.deferred_for`), `tl_keras.config` validates against it without importing the
# doctor.
MODES = ("auto", "full", "off")
