"""``python -m neuroenc ...`` is the ``neuroenc`` command (e.g. under torchrun)."""

from neuroenc.cli import main

main()
