"""What every learner uses: model import (``models``), base model, tokenizer and LoRA (``model``),
the DeepSpeed engine and training loop (``training``), and which examples a silo learns from (``data``).

Used by the silo agent, unlearning, the local runners and the benchmarks; imports none of them.
"""
