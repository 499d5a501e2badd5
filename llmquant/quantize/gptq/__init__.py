"""GPTQ: quantizer.py (GPTQQuantizer, the block loop's handler) and gptq_math.py (the Hessian and the
column solve as pure functions). Kept light: importing the package imports no torch."""
