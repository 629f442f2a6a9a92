"""Deployment paths for quantized models, and which is fastest where (one thread, this CPU):

- onnxruntime (`runtime: onnxruntime`): `ts.export_onnx` of a quantized model writes QDQ / integer ops
  with our scales (see `onnx_ops`). Fastest measured path for both kinds of model we ship:
  Linear-heavy transformers with dynamic int8 (DynamicQuantizeMatMul; minilm about 3-7x faster than
  fp32 PyTorch eager, about 2-7x than fp32 onnxruntime, noisy on a shared machine) and small CNNs
  with static int8 (QLinearConv / QGemm).
- PyTorch eager (`runtime: torch`): dequantizes weights on the fly; same numbers, no speedup (it
  exists for accuracy, training and saving, not for speed).
- torchao + torch.compile: the in-PyTorch int8 path for Linear-heavy models, measured as a peer in
  benchmarks/bench_quant.py (`pip install 'torchslim[quant]'`); our modules do not lower to it yet.
"""
