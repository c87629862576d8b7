"""`python -m tl_keras.compare`: runs the command `tl_keras.cli.compare`."""

from tl_keras.cli.compare import run_main

if __name__ == "__main__":
    run_main()
