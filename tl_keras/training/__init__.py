"""Training: a schedule of phases run on a model, with every artifact kept in the workdir.

    settings.py        the training sections of a run's settings: `RunSettings`, the phases
    plan.py            which phases run from which state of the workdir, and every refusal
    runner.py          `train`: check -> plan -> start -> the phase loop, each phase saved
    start.py           a run's data and model, its recipe card, its one resolve, its batches
    decide.py          the recipe's facts measured, its card decided once and kept
    history.py         one history across phases: global epochs, spans, boundaries
    curves.py          the run's curves (`plot_history`), phases shaded, switches marked
    phase.py           `run_phase`: set-up -> callbacks -> fit -> outcome
    callbacks.py       the callbacks of a phase's fit (history, NaN guard, checkpoint, ...)
    optim.py           optimizer names and factory, a phase's optimizer, the compile (XLA)
    lr_multipliers.py  per-variable learning rates as a Keras optimizer (layer_decay)
    schedules.py       learning-rate schedules by name
    checkpoint.py      epoch-end checkpoints, so --resume loses at most checkpoint_every s
    rollback.py        phase control: undo a phase that made validation worse
    results.py         what a phase hands on: its result, best epoch, rollback decision (data)
    features.py        feature extraction on features computed once
    frozen_val.py      fine-tuning's validation: the frozen bottom's outputs once, or folded
    bottom_views.py    fine-tuning's training on the frozen bottom's outputs, one pass a phase
    lr_finder.py       the learning-rate range test: the sweep (find_lr), the model untouched
    lr_suggest.py      the suggestion read off the range test's loss curve (numpy)
    lr_find.py         the range test of one phase of a config, its files in the workdir
    distribute.py      precision, and tf.distribute strategies
    compare.py         the same budget, four strategies

Nothing here is imported eagerly; `settings`, `plan`, `optim`, `rollback`, `features`,
`distribute` and `checkpoint` import TensorFlow only inside their functions.
"""
