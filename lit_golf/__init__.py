"""lit_golf: the Parameter Golf record stack as a PyTorch Lightning project."""

__version__ = "0.1.0"
