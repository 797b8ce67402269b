"""Parity of llmbook's BLEU/chrF/ROUGE with sacrebleu and rouge-score on real FLORES-200 and XSum text."""

from __future__ import annotations

import json
import random

import pytest

from llmbook.eval import bleu, rouge

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

N_SEG = 120


def _lines(data_file, lang):
    return data_file(f"flores200/{lang}.dev").read_text(encoding="utf-8").splitlines()[:N_SEG]


def _drop_words(lines, p, seed):
    # a crude "noisy system": the reference with a fraction of its words deleted
    rng = random.Random(seed)
    return [" ".join(w for w in s.split() if rng.random() > p) for s in lines]


@pytest.fixture(scope="module")
def flores(data_file):
    eng = _lines(data_file, "eng_Latn")
    return {
        "eng": eng,
        "deu": _lines(data_file, "deu_Latn"),
        "fra": _lines(data_file, "fra_Latn"),
        "spa": _lines(data_file, "spa_Latn"),
        "eng_noisy": _drop_words(eng, 0.3, seed=0),
        "eng_prefix": [" ".join(s.split()[: max(1, len(s.split()) // 2)]) for s in eng],
    }


SYSTEMS = [("deu", ["eng"]), ("eng_noisy", ["eng"]), ("eng_prefix", ["eng"]), ("spa", ["fra", "eng"]),
           ("eng_noisy", ["eng_prefix", "fra"])]


@pytest.mark.parametrize("hyp,refs", SYSTEMS)
@pytest.mark.parametrize("smooth", ["exp", "none", "floor", "add-k"])
def test_corpus_bleu_matches_sacrebleu(flores, hyp, refs, smooth):
    hyps, ref_streams = flores[hyp], [flores[r] for r in refs]
    ours = bleu.corpus_bleu(hyps, ref_streams, smooth_method=smooth)
    theirs = sacrebleu.metrics.BLEU(smooth_method=smooth).corpus_score(hyps, ref_streams)
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert ours.precisions == pytest.approx(theirs.precisions, abs=1e-6)


def test_bleu_lowercase_and_sentence_level(flores):
    hyps, refs = flores["eng_noisy"], [flores["eng"]]
    ours = bleu.corpus_bleu(hyps, refs, lowercase=True)
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hyps, refs, lowercase=True).score, abs=1e-6)
    for h, r in zip(flores["eng_prefix"][:30], flores["eng"][:30]):
        theirs = sacrebleu.sentence_bleu(h, [r]).score
        assert bleu.sentence_bleu(h, [r]).score == pytest.approx(theirs, abs=1e-6)


def test_tokenize_13a_matches_sacrebleu(flores):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    tricky = ["3.14, 1,000 & 5-6 &quot;x&quot;", "end. Start,next", "a-\nb <skipped> c"]
    for line in tricky + flores["eng"] + flores["deu"]:
        assert bleu.tokenize_13a(line) == tok(line)


@pytest.mark.parametrize("hyp,refs", SYSTEMS)
@pytest.mark.parametrize("word_order,eps", [(0, False), (2, False), (0, True)])
def test_corpus_chrf_matches_sacrebleu(flores, hyp, refs, word_order, eps):
    hyps, ref_streams = flores[hyp], [flores[r] for r in refs]
    ours = bleu.corpus_chrf(hyps, ref_streams, word_order=word_order, eps_smoothing=eps)
    theirs = sacrebleu.metrics.CHRF(word_order=word_order, eps_smoothing=eps).corpus_score(hyps, ref_streams)
    assert ours == pytest.approx(theirs.score, abs=1e-6)


def test_bleu_rejects_misaligned_streams(flores):
    with pytest.raises(ValueError, match="reference stream 0 has 3 segments"):
        bleu.corpus_bleu(flores["deu"][:4], [flores["eng"][:3]])
    with pytest.raises(ValueError, match="smooth_method"):
        bleu.corpus_bleu(["a"], [["a"]], smooth_method="magic")


def test_bleu_identity_and_disjoint():
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    assert bleu.corpus_bleu(refs, [refs]).score == pytest.approx(100.0)
    assert bleu.corpus_bleu(["zz yy xx ww", "qq pp oo nn"], [refs]).score == 0.0


@pytest.fixture(scope="module")
def xsum(data_file):
    rows = [json.loads(line) for line in data_file("xsum/xsum_dev_dev.jsonl").open(encoding="utf-8")]
    refs = [r["summary"] for r in rows]
    lead1 = [r["dialogue"].split("\n")[0] for r in rows]
    lead3 = ["\n".join(r["dialogue"].split("\n")[:3]) for r in rows]
    return refs, {"lead1": lead1, "lead3": lead3}


@pytest.mark.parametrize("baseline", ["lead1", "lead3"])
@pytest.mark.parametrize("stem", [True, False])
def test_rouge_matches_rouge_score(xsum, baseline, stem):
    refs, systems = xsum
    scorer = rouge_scorer.RougeScorer(list(rouge.ROUGE_TYPES), use_stemmer=stem)
    for ref, hyp in zip(refs, systems[baseline]):
        theirs = scorer.score(ref, hyp)
        ours = rouge.rouge(ref, hyp, stem=stem)
        for name in rouge.ROUGE_TYPES:
            for field in ("precision", "recall", "fmeasure"):
                assert getattr(ours[name], field) == pytest.approx(getattr(theirs[name], field), abs=1e-6)


def test_rougelsum_multisentence_both_sides(xsum):
    refs, systems = xsum
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    # make the references multi-sentence too: reference summary + the article's second line
    for ref, hyp in zip(refs[:40], systems["lead3"][:40]):
        ref2 = ref + "\n" + hyp.split("\n")[-1]
        assert rouge.rouge(ref2, hyp, ["rougeLsum"])["rougeLsum"].fmeasure == pytest.approx(
            scorer.score(ref2, hyp)["rougeLsum"].fmeasure, abs=1e-6)


def test_corpus_rouge_is_mean_f_and_validates(xsum):
    refs, systems = xsum
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    ours = rouge.corpus_rouge(refs, systems["lead1"], ["rouge1", "rouge2"])
    for name in ("rouge1", "rouge2"):
        mean = sum(scorer.score(r, h)[name].fmeasure for r, h in zip(refs, systems["lead1"])) / len(refs)
        assert ours[name] == pytest.approx(mean, abs=1e-9)
    with pytest.raises(ValueError, match="unknown ROUGE type"):
        rouge.rouge("a b", "a b", ["rougeX"])
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        rouge.corpus_rouge(["a", "b"], ["a"])
