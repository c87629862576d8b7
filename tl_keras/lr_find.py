"""`python -m tl_keras.lr_find`: runs the command `tl_keras.cli.lr_find`."""

from tl_keras.cli.lr_find import run_main

if __name__ == "__main__":
    run_main()
