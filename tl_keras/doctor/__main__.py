"""`python -m tl_keras.doctor`: runs the command `tl_keras.cli.doctor`."""

from tl_keras.cli.doctor import run_main

if __name__ == "__main__":
    run_main()
