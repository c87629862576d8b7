"""`python -m tl_keras.export`: the command (see tl_keras.inference.export.manifest)."""

from tl_keras.inference.export.manifest import run_main

if __name__ == "__main__":
    run_main()
