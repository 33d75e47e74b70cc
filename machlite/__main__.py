"""``python -m machlite ARGS``: the ``machlite`` command."""

from machlite.commands import main

if __name__ == "__main__":
    main()
