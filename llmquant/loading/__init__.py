"""Where a model comes from and what it runs on:

  sources.py  local HF directory / .gguf file / hub id / alias: resolving, fetching (offline errors),
              fingerprinting, the config, a GGUF de-quantized into a plain HF directory
  models.py   reading a model and its tokenizer from an HF directory, with one-line errors
  runtime.py  compute dtypes, the device, CPU threads

Import from those modules; this package itself imports nothing.
"""
