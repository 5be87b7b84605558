"""Near-twin sentences: real hard negatives for an xsim++-style test.

Catalog sentences come in families ("Returns the smallest number." / "Returns the largest
number."). Each member has real translations, so the near twins (word Jaccard >= 0.7) of an
evaluation split's sentences that are not in that split are written as its xsim++ negatives, in
LASER's layout and in every language (xsim++ proper perturbs English only):

    OUT/<split>_augmented/<lang>_augmented.<split>     the extra target sentences
    OUT/<split>_augmented/<lang>_errtype.<split>.json  sentence -> {"src": its twin in the split,
                                                       "errtype": number, negation or lexical}

Twins inside the split are already each other's negatives and are not repeated.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import re
from typing import Mapping, Sequence

from sonar_jax.data.corpora.layout import ENGLISH, check_sentence


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+(?:'\w+)?", text.lower()))  # keeps "don't" whole


def near_twins(sentences: Sequence[str], threshold: float = 0.7) -> list[tuple[int, int, float]]:
    """All pairs (i < j, jaccard) of distinct sentences whose word-set Jaccard is >= threshold.

    Prefix filtering: with each word set sorted rarest word first, two sets that reach the
    threshold share a word among the first |A| - ceil(threshold * |A|) + 1 words of each, so
    only pairs meeting in those prefixes are compared.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"Jaccard threshold {threshold} must be in (0, 1]")
    sets = [_words(s) for s in sentences]
    frequency = collections.Counter(word for words in sets for word in words)
    index: dict[str, list[int]] = collections.defaultdict(list)
    pairs = []
    for j, words in enumerate(sets):
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = ordered[:len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        candidates = {i for word in prefix for i in index[word]}
        for i in sorted(candidates):
            union = len(sets[i] | words)
            score = len(sets[i] & words) / union if union else 0.0
            if score >= threshold and sentences[i] != sentences[j]:
                pairs.append((i, j, round(score, 3)))
        for word in prefix:
            index[word].append(j)
    return pairs


_NEGATIONS = frozenset("not no never none nothing cannot can't don't doesn't isn't".split())


def error_type(gold: str, twin: str) -> str:
    """How a twin differs from its gold sentence: a number, a negation, or other words."""
    changed = _words(gold) ^ _words(twin)
    if changed and all(word.isdigit() for word in changed):
        return "number"
    return "negation" if changed & _NEGATIONS else "lexical"


def write_twins(out_dir: str | pathlib.Path, splits: Mapping[str, Sequence[Mapping[str, str]]],
                pool: Sequence[Mapping[str, str]], langs: Sequence[str],
                eval_splits: Sequence[str] = ("dev", "devtest"),
                threshold: float = 0.7) -> dict[str, int]:
    """The xsim++ negatives of each evaluation split, taken from `pool` (all rows of the corpus,
    also those a split limit left out); returns their counts per split."""
    english = [row[ENGLISH] for row in pool]
    pairs = near_twins(english, threshold)
    counts = {}
    for split in eval_splits:
        members = splits.get(split, ())
        line_of = {row[ENGLISH]: line for line, row in enumerate(members)}
        best: dict[int, tuple[float, int]] = {}  # pool row -> (jaccard, line of its gold twin)
        for a, b, score in pairs:
            for own, other in ((a, b), (b, a)):
                if english[own] in line_of and english[other] not in line_of:
                    gold = line_of[english[own]]
                    if other not in best or (score, -gold) > (best[other][0], -best[other][1]):
                        best[other] = (score, gold)
        counts[split] = len(best)
        if not best:
            continue
        folder = pathlib.Path(out_dir) / f"{split}_augmented"
        folder.mkdir(parents=True, exist_ok=True)
        for lang in langs:
            entries = [(pool[k][lang], members[best[k][1]][lang], pool[k][ENGLISH],
                        members[best[k][1]][ENGLISH]) for k in sorted(best)]
            lines = [check_sentence(twin, f"{split} negative ({lang})") for twin, *_ in entries]
            (folder / f"{lang}_augmented.{split}").write_text(
                "".join(line + "\n" for line in lines), encoding="utf-8")
            errtypes = {twin: {"src": gold, "errtype": error_type(gold_en, twin_en)}
                        for twin, gold, twin_en, gold_en in entries}
            (folder / f"{lang}_errtype.{split}.json").write_text(
                json.dumps(errtypes, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return counts
