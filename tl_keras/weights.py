"""`python -m tl_keras.weights`: runs the command `tl_keras.cli.weights`."""

from tl_keras.cli.weights import run_main

if __name__ == "__main__":
    run_main()
