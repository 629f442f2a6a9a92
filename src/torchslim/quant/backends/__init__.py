"""Deployment paths for quantized models, and which is fastest where (one thread, this 2-core CPU).

- onnxruntime (`runtime: onnxruntime`): `ts.export_onnx` of a quantized model writes QDQ / integer ops
  with our scales (see `onnx_ops`). onnxruntime fuses them into QLinearConv / QGemm / uint8 MaxPool
  (static) and DynamicQuantizeMatMul (dynamic).
- torchao + torch.compile (`runtime: torch.compile`, or `torchao.lower(model)`; needs
  `pip install 'torchslim[quant]'`): our quantized Linear layers become torchao `Int8Tensor` weights
  carrying our int8 integers and scales, and the compiled graph runs `torch._int_mm`. Convolutions,
  embeddings, asymmetric or grouped weights and static activations stay as they are and are named
  (`torchao.plan`). Without torchao the runtime compiles our dequantizing layers, with a warning.
- PyTorch eager (`runtime: torch`): dequantizes weights on the fly; same numbers, no speedup (it
  exists for accuracy, training and saving, not for speed).

Which is fastest (`python -m benchmarks.run quant --quick`, every path of a model timed round-robin in
one process; two runs on a shared machine, so ranges):
- small CNNs with static int8 (lenet5-digits, mnist1d-cnn): onnxruntime, the only path with integer
  convolutions. Ours now runs the same fused graph as onnxruntime's own quantize_static (node for
  node after BatchNorm folding and one grid per tensor boundary, see `torchslim.quant.flow`): lenet5
  2.00 ms vs 1.98 ms (ours before: 2.65 ms), mnist1d-cnn 0.127 ms vs 0.124 ms (before: 0.218 ms).
- Linear-heavy transformers with dynamic int8 (minilm, batch 64 x 18 tokens), speedup over fp32
  PyTorch eager: ours in onnxruntime 2.4-2.6x (cosine to fp32 0.9966); ours lowered to torchao and
  compiled 2.1-2.3x (cosine 0.9965: our numbers, our eager layers to a cosine of 0.9993); lowered with
  `per_token=True` 2.6-2.9x (cosine 0.9991, but no longer our eager/ONNX numbers); torchao's own int8
  config 2.6-2.8x; fp32 torch.compile 1.0-1.1x. So for the exact numbers that `ts.quantize_`
  validated, onnxruntime is the fastest path (about 1.1x ahead of the torchao lowering); in PyTorch,
  the per-token lowering is about 1.1x faster than that, with other (here closer to fp32) numbers.
"""
