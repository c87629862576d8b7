"""`python -m tl_keras.predict`: runs the command `tl_keras.cli.predict`."""

from tl_keras.cli.predict import run_main

if __name__ == "__main__":
    run_main()
