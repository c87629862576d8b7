"""`python -m tl_keras.train`: runs the command `tl_keras.cli.train` (also the `tl-keras-train` script)."""

from tl_keras.cli.train import run_main

if __name__ == "__main__":
    run_main()
