"""Evaluation: xsim/xsim++ retrieval error, BLEU/chrF, the per-language report, and bitext
mining."""

from sonar_jax.evaluate.mining import MinedPairs, mine, mine_corpora
from sonar_jax.evaluate.neighbors import Neighbors, knn, l2_normalize
from sonar_jax.evaluate.report import (evaluate_speech_retrieval, evaluate_speech_translation,
                                       evaluate_text_retrieval, evaluate_translation,
                                       format_table, run_evaluation, write_json)
from sonar_jax.evaluate.translation import bleu_tokenizer, translation_scores
from sonar_jax.evaluate.xsim import XsimResult, error_types, xsim, xsim_both_directions

__all__ = [
    "MinedPairs", "Neighbors", "XsimResult", "bleu_tokenizer", "error_types", "evaluate_speech_retrieval",
    "evaluate_speech_translation", "evaluate_text_retrieval", "evaluate_translation", "format_table", "knn", "l2_normalize",
    "mine", "mine_corpora", "run_evaluation", "translation_scores", "write_json", "xsim", "xsim_both_directions",
]
