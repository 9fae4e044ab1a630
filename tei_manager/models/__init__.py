"""Model management: sizing from a model's own files."""
