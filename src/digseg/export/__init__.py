"""A trained model outside PyTorch: `digseg export` writes ONNX graphs and a manifest (`onnx_export`, torch side);
`OnnxDiGSegPipeline` (`runtime`) runs such a folder on onnxruntime with numpy only (`manifest`, `numpy_ops`,
`tokenizer`, `runtime` import neither torch, diffusers nor transformers)."""
