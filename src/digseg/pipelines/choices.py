"""The pipeline's lists of choices that the command line offers, as plain data (no torch import): how an image
is viewed at test time."""

INFERENCE_MODES = ("whole", "slide")  # the whole image, or sliding windows (sliding.py)
