"""`python -m clip_client`: the `clip-client` command (docs/cli.md)."""

from ._cli import main

if __name__ == "__main__":
    main()
