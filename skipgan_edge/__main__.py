"""``python -m skipgan_edge`` is the same as the ``skipgan-edge`` command."""

from skipgan_edge.cli import main

if __name__ == "__main__":
    main()
