"""Run the moetape CLI as ``python -m moetape``."""

from moetape.cli import cli

if __name__ == "__main__":
    cli(prog_name="moetape")
