"""`python -m tl_keras.evaluate`: the command (see tl_keras.inference.evaluate)."""

from tl_keras.inference.evaluate import run_main

if __name__ == "__main__":
    run_main()
