"""The shared per-layer errors (quantize/metrics.py) against their definitions, and the method
packages' promise to import no torch (so a method's config can be read without it)."""

import math
import subprocess
import sys

import pytest
import torch

from llmquant.quantize.metrics import output_error, relative_error


def test_relative_error_is_the_relative_frobenius_norm():
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    w_hat = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    assert relative_error(w, w_hat) == pytest.approx(1 / 5)
    assert relative_error(w, w) == 0.0
    assert relative_error(torch.zeros(2, 2), torch.ones(2, 2)) == pytest.approx(2 / 1e-12)


def test_relative_error_computes_in_float32_whatever_the_dtypes():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w_hat = w + 0.01 * torch.randn(16, 32)
    ref = float((w - w_hat).norm() / w.norm())
    assert relative_error(w, w_hat) == pytest.approx(ref, rel=1e-6)
    wb = w.bfloat16()
    assert relative_error(wb, w_hat) == pytest.approx(float((wb.float() - w_hat).norm() / wb.float().norm()), rel=1e-6)


def test_output_error_is_the_relative_output_error_over_tokens():
    torch.manual_seed(1)
    x = torch.randn(200, 24)
    w = torch.randn(8, 24)
    w_hat = w + 0.05 * torch.randn(8, 24)
    ref = float((x @ (w_hat - w).t()).norm() / (x @ w.t()).norm())
    assert output_error(w, w_hat, x.t() @ x) == pytest.approx(ref, rel=1e-4)
    assert output_error(w, w, x.t() @ x) == 0.0


def test_output_error_of_a_weight_with_no_output():
    H = torch.zeros(4, 4)
    w = torch.ones(2, 4)
    assert output_error(w, w * 2, H) == 0.0  # nothing reaches the outputs: nothing to compare
    H = torch.diag(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert output_error(w, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), H) == math.inf


def test_method_packages_import_no_torch():
    code = ("import sys, llmquant.quantize, llmquant.quantize.rtn, llmquant.quantize.gptq, "
            "llmquant.quantize.awq, llmquant.quantize.bnb; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
