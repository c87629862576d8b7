"""The command layer: one small module per `python -m tl_keras.<command>`, over library calls.

    common.py     what every command shares: config flags, logging, exit codes, the error line
    train.py      python -m tl_keras.train     -> tl_keras.training.runner.train
    lr_find.py    python -m tl_keras.lr_find   -> tl_keras.training.lr_find.run_lr_find
    compare.py    python -m tl_keras.compare   -> tl_keras.training.compare.compare
    evaluate.py   python -m tl_keras.evaluate  -> tl_keras.inference.evaluate.evaluate_workdir
    predict.py    python -m tl_keras.predict   -> tl_keras.inference.predict.predict_workdir
    export.py     python -m tl_keras.export    -> tl_keras.inference.export (export/verify)

`python -m tl_keras.<command>` runs the one-line module `tl_keras/<command>.py`, which calls the
command's `run_main`. Library modules never import this package.
"""
