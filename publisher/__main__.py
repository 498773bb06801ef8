"""`python -m publisher`: the same as the `fill-publisher` command."""

from publisher.cli import main

if __name__ == "__main__":
    main()
