"""``python -m spikelight`` is the same as the ``spikelight`` console script."""

from spikelight.cli import main

if __name__ == "__main__":
    main()
