"""``python -m resurgo``: the same as the ``resurgo`` command."""

from resurgo.cli.main import entry_point

if __name__ == "__main__":
    entry_point()
