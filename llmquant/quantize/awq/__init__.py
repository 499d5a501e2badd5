"""AWQ: quantizer.py (AWQQuantizer and its block handler), awq_math.py (grid search, clipping and
statistics as pure functions), awq_search.py (replaying a block's calls to score scales) and
awq_arch.py (the table of scale mappings per architecture). Kept light: importing the package
imports no torch."""
