"""An exported model (`digseg export`) on onnxruntime: `OnnxDiGSegPipeline` (`pipeline`), its manifest, numpy
steps, images and tokenizer. Nothing here imports torch, diffusers or transformers."""
