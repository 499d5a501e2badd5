"""The classic path: CNN/BERT classifiers quantized for CPUs and edge devices.

A `kind: classic` recipe names a user's model (an HF sequence-classification directory, a
`module:factory` entry point plus a state_dict, or an ONNX file), a labelled dataset, and
variants built on torchao (dynamic INT8, static INT8 through pt2e, QAT, FP16/BF16 casting,
mixed precision) or ONNX Runtime (dynamic, static QDQ). Every variant is saved to disk, loaded
back and validated by one code path (`validate.py`): accuracy against the baseline on the same
validation split, size, batch-1 latency, throughput, NaN/Inf check and a verdict.

Modules: recipe (typed sections), data (datasets, splits), models (sources), zoo (small
models in plain torch), train (a short training loop), export (torch.export programs),
methods (the table) with ptq / qat / mixed / onnx_rt, runners (torch or ORT), validate,
results, select, pipeline.
"""
