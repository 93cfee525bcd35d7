"""The pipeline's stages, one script each: `python -m stages.NAME` from the repository root."""
