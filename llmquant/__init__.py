"""llmquant: quantize LLMs with several methods and measure every variant on one protocol."""

__version__ = "0.1.0"
