"""Corpus-level BLEU, chrF and chrF++ (sacrebleu), with BLEU's tokenizer chosen by target language.

BLEU counts word n-grams, so scripts written without spaces between words need their own
tokenizer. The choice is made from the script part of the language code (`zho_Hans` -> Hans):

    script                                   tokenizer
    Hans, Hant (Chinese)                     zh     (Chinese characters split, other text as 13a)
    Jpan, Hang, Thai, Laoo, Khmr, Mymr, Tibt char   (every character a token)
    anything else                            13a    (sacrebleu's default, mteval-v13a)

Korean (Hang) does use spaces, but between multi-morpheme words, so 'char' is used as for the
others; sacrebleu's own choices for Japanese and Korean (mecab) and the FLORES SentencePiece
tokenizers (spBLEU) need a download, so they are never picked here. chrF ignores the tokenizer.
"""

from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import BLEU, CHRF

SCRIPT_TOKENIZERS = {
    "Hans": "zh", "Hant": "zh",
    "Jpan": "char", "Hang": "char", "Thai": "char", "Laoo": "char", "Khmr": "char",
    "Mymr": "char", "Tibt": "char",
}
DEFAULT_TOKENIZER = "13a"


def bleu_tokenizer(lang: str) -> str:
    """sacrebleu tokenizer for BLEU on text in `lang` (a code such as 'fra_Latn')."""
    language, _, script = lang.partition("_")
    if not language or not script:
        raise ValueError(f"language code {lang!r} is not of the form 'lang_Script' "
                         "(e.g. 'fra_Latn', 'zho_Hans')")
    return SCRIPT_TOKENIZERS.get(script, DEFAULT_TOKENIZER)


def translation_scores(hypotheses: Sequence[str], references: Sequence[str], target_lang: str,
                       *, tokenize: str | None = None) -> dict:
    """Corpus BLEU, chrF and chrF++ of `hypotheses` against one reference each.

    `tokenize` overrides the per-language choice with any sacrebleu tokenizer name.
    """
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("no sentences to score")
    tokenize = tokenize or bleu_tokenizer(target_lang)
    streams = [references]
    return {
        "bleu": BLEU(tokenize=tokenize).corpus_score(hypotheses, streams).score,
        "chrf": CHRF().corpus_score(hypotheses, streams).score,
        "chrf++": CHRF(word_order=2).corpus_score(hypotheses, streams).score,
        "tokenize": tokenize,
        "sentences": len(hypotheses),
    }
