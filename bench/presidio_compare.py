#!/usr/bin/env python3
"""Runs Microsoft Presidio on the mideum-guard corpus for comparison.

Installs presidio-analyzer (pinned) into a private virtualenv on first use,
enables its Korean recognizers (KR_RRN, KR_FRN, KR_BRN, KR_PASSPORT,
KR_DRIVER_LICENSE, disabled by default in Presidio) plus the generic e-mail,
IP, credit-card and phone (region KR) recognizers for language "ko", and
uses a stub NLP engine because no spaCy model can be downloaded here (so no
NER: Presidio finds no names, addresses or bank accounts in Korean text).

Prints single-threaded throughput and precision/recall per type using the
same exact-span matching as crates/mideum-guard/tests/corpus.rs.

    python3 bench/presidio_compare.py [--mb 2]
"""
import json
import os
import subprocess
import sys
import time

PIN = "presidio-analyzer==2.2.366"
VENV = os.environ.get("PRESIDIO_VENV", "/tmp/presidio-venv")
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "testdata", "guard", "corpus.jsonl")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) != os.path.abspath(py):
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", PIN])
        os.execv(py, [py] + sys.argv)


ensure_venv()

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry  # noqa: E402
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine  # noqa: E402
from presidio_analyzer import predefined_recognizers as pr  # noqa: E402


class StubNlpEngine(NlpEngine):
    """No tokenizer, no NER: pattern recognizers only."""

    def load(self):
        pass

    def is_loaded(self):
        return True

    def process_text(self, text, language):
        return NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=self, language=language)

    def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
        for t in texts:
            yield t, self.process_text(t, language)

    def is_stopword(self, word, language):
        return False

    def is_punct(self, word, language):
        return False

    def get_supported_entities(self):
        return []

    def get_supported_languages(self):
        return ["ko"]


MAP = {
    "KR_RRN": "KR_RRN", "KR_FRN": "KR_FRN", "KR_BRN": "KR_BRN", "KR_PASSPORT": "KR_PASSPORT",
    "KR_DRIVER_LICENSE": "KR_DRIVER_LICENSE", "EMAIL_ADDRESS": "EMAIL", "IP_ADDRESS": "IP_ADDRESS",
    "CREDIT_CARD": "CREDIT_CARD", "PHONE_NUMBER": "KR_PHONE",
}


def build():
    reg = RecognizerRegistry(supported_languages=["ko"])
    for cls in [pr.KrRrnRecognizer, pr.KrFrnRecognizer, pr.KrBrnRecognizer, pr.KrPassportRecognizer,
                pr.KrDriverLicenseRecognizer, pr.EmailRecognizer, pr.IpRecognizer, pr.CreditCardRecognizer]:
        reg.add_recognizer(cls(supported_language="ko"))
    reg.add_recognizer(pr.PhoneRecognizer(supported_language="ko", supported_regions=["KR"]))
    return AnalyzerEngine(registry=reg, nlp_engine=StubNlpEngine(), supported_languages=["ko"])


def main():
    mb = 2.0
    if "--mb" in sys.argv:
        mb = float(sys.argv[sys.argv.index("--mb") + 1])
    docs = [json.loads(l) for l in open(CORPUS, encoding="utf-8") if l.strip()]
    engine = build()
    counts = {}
    t0 = time.perf_counter()
    nbytes = 0
    for d in docs:
        text = d["text"]
        nbytes += len(text.encode("utf-8"))
        res = engine.analyze(text=text, language="ko", score_threshold=0.5)
        found = {(MAP[r.entity_type], r.start, r.end) for r in res if r.entity_type in MAP}
        gold = {(e["type"], e["start"], e["end"]) for e in d["entities"]}
        for t in set(MAP.values()):
            c = counts.setdefault(t, [0, 0, 0])
            g = {x for x in gold if x[0] == t}
            f = {x for x in found if x[0] == t}
            c[0] += len(g & f)
            c[1] += len(f - g)
            c[2] += len(g - f)
    corpus_s = time.perf_counter() - t0
    # Throughput on a larger text made of the corpus, as one call per document.
    texts, size = [], 0
    while size < mb * 1e6:
        for d in docs:
            texts.append(d["text"])
            size += len(d["text"].encode("utf-8"))
    t0 = time.perf_counter()
    for t in texts:
        engine.analyze(text=t, language="ko", score_threshold=0.5)
    dt = time.perf_counter() - t0
    print(f"{PIN}: {len(docs)} docs ({nbytes / 1e6:.2f} MB) in {corpus_s:.2f}s")
    print(f"throughput (corpus, PII-dense): {size / 1e6 / dt:.3f} MB/s on {size / 1e6:.1f} MB")
    print(f"{'type':<18} {'tp':>5} {'fp':>5} {'fn':>5} {'precision':>9} {'recall':>7}")
    for t in sorted(counts):
        tp, fp, fn = counts[t]
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        print(f"{t:<18} {tp:>5} {fp:>5} {fn:>5} {p:>9.4f} {r:>7.4f}")


if __name__ == "__main__":
    main()
