"""DiGSegPipeline and what it is made of: latent segmentation (encode, denoise, ensembles), sliding windows, image
processing and native-size outputs, MaskCodec, prompts, inputs, label-map drawing and the model card."""
