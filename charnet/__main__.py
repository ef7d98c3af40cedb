"""`python -m charnet` (and `torchrun -m charnet train ...`)."""

from charnet.cli import main

if __name__ == "__main__":
    main()
