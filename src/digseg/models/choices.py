"""What a DiGSeg model can be, as lists of choices: its prediction target, how it was trained, which decoder
reads its masks. Plain data, so that the command-line parser reads them without importing torch."""

PREDICTION_TYPES = ("sample", "v_prediction", "epsilon")
OBJECTIVES = ("diffusion", "one-step")
MASK_DECODERS = ("auto", "light", "vae")  # auto: the model's light mask decoder if it has one, else the VAE
