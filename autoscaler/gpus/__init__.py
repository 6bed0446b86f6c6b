"""GPU inventory, topology and placement."""
