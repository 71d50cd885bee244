"""`python -m processor.cli`: the same as the `processor` command."""

from processor.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
