"""Federated unlearning (E2URec) at one silo, its NegGrad baseline and their scoring (Retrain: ``fedshield.local.retrain``).

An integrator calls :func:`unlearn` with the current model (base path + every LoRA tensor),
the federation's :class:`~fedshield.updates.VectorLayout` and a :func:`forget_split`; it
gets back the replacement shared vector (to encrypt and upload as a special round) and
the silo's new private tensors.
"""

from .e2urec import bad_teacher, unlearn
from .evaluate import jensen_shannon, score_adapter, yes_distribution
from .fold import FoldedAdapter, fold_into_adapter, fold_module
from .losses import answer_cross_entropy, answer_kl, student_loss
from .neggrad import neg_grad
from .result import UnlearningResult
from .spec import UnlearningSpec
from .split import ForgetSplit, forget_split
from .teacher import forgetting_teacher

__all__ = [
    "FoldedAdapter", "ForgetSplit", "UnlearningResult", "UnlearningSpec", "answer_cross_entropy", "answer_kl", "bad_teacher",
    "fold_into_adapter", "fold_module", "forget_split", "forgetting_teacher", "jensen_shannon", "neg_grad",
    "score_adapter", "student_loss", "unlearn", "yes_distribution",
]
