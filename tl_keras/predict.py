"""`python -m tl_keras.predict`: the command (see tl_keras.inference.predict)."""

from tl_keras.inference.predict import run_main

if __name__ == "__main__":
    run_main()
