"""Local runners that start processes or whole federations on one machine: the demo federation
(``demo``), local unlearning (``unlearning``), the Retrain baseline (``retrain``) and the
in-process federation (``simulation``). Nothing else in ``fedshield`` imports this package.
"""
