"""bitsandbytes through transformers: quantizer.py (BnbQuantizer). Kept light: importing the package
imports no torch."""
