"""The client side of a built image: reading its labels (images), talking to a running
container per interface (probe), and checking it against the OMI spec (check)."""
