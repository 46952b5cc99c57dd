"""Medical VQA scoring: the LLaVA-Med-compatible rules, quirks included, and corrected `strict` rules.

This file depends on the standard library only, so the evaluate module beside it can be published as a Space
as is, and `vital_hub.eval` imports the same functions for `vital eval vqa-score`.

LLaVA-Med compatibility (`llava-med`), as its evaluation scripts behave:
- normalisation: punctuation from PUNCTUATION becomes a space, or is deleted outright when the character sits
  next to a space anywhere in the text or when the text holds a digit-comma-digit; periods not followed by a
  digit are deleted (the original passes `re.UNICODE` where `re.sub` takes a count, so at most 32 per pass);
  then lower-case, number words to digits, articles dropped, the VQA contraction table (whose capitalised keys
  never match lower-cased words);
- the scripts lower-case and normalise both strings, then normalise them once more inside the open metric;
- open questions: recall of the ground-truth words in the prediction, where each shared word counts as many
  times as the *prediction* repeats it, so "lung lung" against "left lung" scores 2/3;
- closed questions: a hit when the normalised ground truth is a substring of the normalised prediction, so "no"
  matches "nodule" and "yes" matches "eyes". One script (`run_eval.py`) also wants "yes" or "no" somewhere in
  the prediction (`closed_rule="substring-yes-no"`). That script also forgets to count a miss when the
  prediction does say yes or no, which shrinks the denominator; the batch script fixed this and so do we.

Strict (`strict`): the same normalisation with the defects removed (punctuation always becomes a space except thousands separators, which go, periods
other than decimal points always go, contractions matched in lower case), open recall with each ground-truth
word matched at most as often as it occurs in the ground truth, and closed hits on whole words: a yes/no ground
truth must equal the first yes/no word of the prediction, any other answer must appear as a run of whole words.
"""

from __future__ import annotations

import re
from collections import Counter

PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# The VQA evaluation's contraction table, which LLaVA-Med reuses: missing apostrophes put back.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
LOWER_CONTRACTIONS = {key.lower(): value.lower() for key, value in CONTRACTIONS.items()}
# The original's lookbehind is misspelt `(?!<=\d)`, a lookahead that always passes: only "not followed by a
# digit" takes effect.
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
ORIGINAL_PERIOD_LIMIT = 32  # re.UNICODE == 32, passed as `count`
STRICT_PUNCTUATION = re.compile(r"[^\w\s.']|_")
STRICT_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
YES_NO = ("yes", "no")
COMPATS = ("llava-med", "strict")
CLOSED_RULES = ("substring", "substring-yes-no")


def normalize_llava_med(text: str) -> str:
    """One pass of LLaVA-Med's `normalize_word`, with its quirks."""
    spaced_somewhere = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if spaced_somewhere or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=ORIGINAL_PERIOD_LIMIT)
    words = [NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words).replace(",", "")


def normalize_strict(text: str) -> str:
    """Lower-case words with every punctuation mark spaced out (thousands separators dropped, decimal points
    kept), number words and contractions mapped, articles dropped."""
    out = STRICT_PERIOD.sub(" ", STRICT_PUNCTUATION.sub(" ", THOUSANDS_COMMA.sub("", text.lower())))
    words = [NUMBER_WORDS.get(word, word) for word in out.split()]
    return " ".join(LOWER_CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def open_recall_llava_med(prediction: str, reference: str) -> float:
    """Recall as LLaVA-Med's `calculate_f1score` returns it, on strings its caller already normalised once."""
    predicted = Counter(normalize_llava_med(prediction).split())
    expected = Counter(normalize_llava_med(reference).split())
    if not predicted or not expected:
        return 0.0
    true_positives = sum(count for word, count in predicted.items() if word in expected)
    missed = sum(count for word, count in expected.items() if word not in predicted)
    return true_positives / (true_positives + missed) if true_positives else 0.0


def open_recall_strict(prediction: str, reference: str) -> float:
    """Share of the ground-truth words found in the prediction, each matched at most as often as it is expected."""
    predicted = Counter(prediction.split())
    expected = Counter(reference.split())
    if not expected:
        return 0.0
    return sum(min(count, predicted[word]) for word, count in expected.items()) / sum(expected.values())


def closed_hit_llava_med(prediction: str, reference: str, closed_rule: str = "substring") -> bool:
    if closed_rule == "substring-yes-no" and "yes" not in prediction and "no" not in prediction:
        return False
    return reference in prediction


def closed_hit_strict(prediction: str, reference: str) -> bool:
    predicted, expected = prediction.split(), reference.split()
    if not expected:
        return False
    if reference in YES_NO:
        first = next((word for word in predicted if word in YES_NO), None)
        return first == reference
    width = len(expected)
    return any(predicted[start : start + width] == expected for start in range(len(predicted) - width + 1))


def score_one(prediction: str, reference: str, answer_type: str, compat: str, closed_rule: str = "substring"):
    """The per-question score (recall for OPEN, 0/1 for CLOSED) under one compatibility mode."""
    kind = answer_type.upper()
    if kind not in ("OPEN", "CLOSED"):
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
    if compat == "llava-med":
        # The scripts lower-case, then normalise, before the metric functions normalise again.
        prediction = normalize_llava_med(prediction.lower())
        reference = normalize_llava_med(reference.lower())
        if kind == "OPEN":
            return open_recall_llava_med(prediction, reference)
        return float(closed_hit_llava_med(prediction, reference, closed_rule))
    if compat == "strict":
        prediction, reference = normalize_strict(prediction), normalize_strict(reference)
        if kind == "OPEN":
            return open_recall_strict(prediction, reference)
        return float(closed_hit_strict(prediction, reference))
    raise ValueError(f"unknown compat {compat!r}; known: {list(COMPATS)}")


def score_all(predictions, references, answer_types, compat: str = "llava-med", closed_rule: str = "substring"):
    """Open recall and closed accuracy (x100, as papers report them), the counts and the per-question scores."""
    if not len(predictions) == len(references) == len(answer_types):
        raise ValueError(
            f"predictions ({len(predictions)}), references ({len(references)}) and answer_types "
            f"({len(answer_types)}) must have the same length"
        )
    if closed_rule not in CLOSED_RULES:
        raise ValueError(f"unknown closed_rule {closed_rule!r}; known: {list(CLOSED_RULES)}")
    scores = [
        score_one(p, r, t, compat, closed_rule) for p, r, t in zip(predictions, references, answer_types, strict=True)
    ]
    open_scores = [s for s, t in zip(scores, answer_types, strict=True) if t.upper() == "OPEN"]
    closed_scores = [s for s, t in zip(scores, answer_types, strict=True) if t.upper() == "CLOSED"]
    return {
        # sum / n * 100 in this order, as LLaVA-Med's run_eval.py computes it, so totals compare bit for bit
        "open_recall": sum(open_scores) / len(open_scores) * 100 if open_scores else None,
        "closed_accuracy": sum(closed_scores) / len(closed_scores) * 100 if closed_scores else None,
        "open_count": len(open_scores),
        "closed_count": len(closed_scores),
        "scores": scores,
    }
