"""What a federation learns from: the workload interface (``base``), file formats and parsers (MovieLens, instruction
JSONL), synthetic tasks, splits into silos, and scoring. No model code: the model-touching halves live in ``learning``."""
