"""Round-to-nearest: quantizer.py (RTNQuantizer). Kept light: importing the package imports no torch."""
