"""`python -m tl_keras.export`: runs the command `tl_keras.cli.export`."""

from tl_keras.cli.export import run_main

if __name__ == "__main__":
    run_main()
