"""export stage of the pipeline (see ARCHITECTURE.md section 1)."""

# the projection encodings `nanochat export --quant` offers (gguf_tensors.QUANT_TYPES maps them to
# GGUF types); named here so that the CLI lists them without loading PyTorch
QUANT_NAMES = ("tq2_0", "tq1_0", "f16")
