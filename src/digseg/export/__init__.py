"""A trained model outside PyTorch, torch side: `digseg export` writes ONNX graphs and a manifest (`onnx_export`);
`digseg.runtime` runs such a folder on onnxruntime with numpy only."""
