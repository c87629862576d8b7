"""`python -m tl_keras.evaluate`: runs the command `tl_keras.cli.evaluate`."""

from tl_keras.cli.evaluate import run_main

if __name__ == "__main__":
    run_main()
