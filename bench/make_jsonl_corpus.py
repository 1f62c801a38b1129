"""Writes a JSON Lines corpus of English-like web documents, for the `prepare` benchmark (bench/README.md).

    python3 bench/make_jsonl_corpus.py --out /tmp/corpus.jsonl --gigabytes 2

Each line is {"id": N, "url": "...", "text": "..."} like a web-crawl export. The text: paragraphs of sentences
whose words follow a Zipf law over common English words and pronounceable made-up ones (so a BPE vocabulary has a
long tail to learn, as on real text), with capitals, punctuation, numbers, quotes and a little non-ASCII. Document
lengths are log-normal around 2.5 KB. Deterministic for --seed; standard library only. Generated data is not
committed: write it outside the repository.
"""

import argparse
import itertools
import json
import math
import random

COMMON = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
    "not word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well also play small end "
    "put home read hand port large spell add even land here must big high such follow act why ask men change went "
    "light kind off need house picture try us again animal point mother world near build self earth father head "
    "stand own page should country found answer school grow study still learn plant cover food sun four between "
    "state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late "
    "run while press close night real life few north open seem together next white children begin got walk "
    "example ease paper group always music those both mark often letter until mile river car feet care second book "
    "carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face "
    "wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family "
    "direct pose leave song measure door product black short numeral class wind question happen complete ship area "
    "half rock order fire south problem piece told knew pass since top whole king space heard best hour better true "
    "during hundred five remember step early hold west ground interest reach fast verb sing listen six table travel "
    "less morning ten simple several vowel toward war lay against pattern slow center love person money serve "
    "appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark "
    "machine note wait plan figure star box noun field rest correct able pound done beauty drive stood contain "
    "front teach week final gave green oh quick develop ocean warm free minute strong special mind behind clear "
    "tail produce fact street inch multiply nothing course stay wheel full force blue object decide surface deep "
    "moon island foot system busy test record boat common gold possible plane stead dry wonder laugh thousand ago "
    "ran check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language among"
).split()
ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
          "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr", "wh"]
NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rd", "rs", "st", "ck", "sh", "th", "ll"]
SUFFIXES = ["", "", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment", "ness", "able", "ist", "ous"]
EXTRA = ["café", "naïve", "résumé", "Zürich", "São", "façade", "coöperate", "—", "…", "€", "°C"]
DOMAINS = ["example.com", "news.example.org", "blog.example.net", "wiki.example.edu", "forum.example.io"]


def made_up_words(rng, count):
    words = set()
    while len(words) < count:
        syllables = rng.choice([1, 1, 2, 2, 2, 3])
        stem = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS) for _ in range(syllables))
        words.add(stem + rng.choice(SUFFIXES))
    return sorted(words)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON Lines file to write (outside the repository)")
    parser.add_argument("--gigabytes", type=float, default=2.0, help="size to write, in units of 1e9 bytes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    vocabulary = COMMON + made_up_words(rng, 60_000) + EXTRA
    # Zipf: weight of rank r is 1 / (r + 2.7)^1.05, the shape of English word frequencies.
    weights = list(itertools.accumulate(1.0 / (rank + 2.7) ** 1.05 for rank in range(len(vocabulary))))
    target = int(args.gigabytes * 1e9)
    written = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for doc_id in itertools.count():
            if written >= target:
                break
            doc_bytes = int(math.exp(rng.gauss(math.log(2500), 0.8)))
            paragraphs, size = [], 0
            while size < doc_bytes:
                sentences = []
                for _ in range(rng.randint(2, 7)):
                    words = rng.choices(vocabulary, cum_weights=weights, k=rng.randint(5, 28))
                    if rng.random() < 0.15:
                        words.insert(rng.randrange(len(words)), str(rng.randint(1, 2024)))
                    if rng.random() < 0.1:
                        at = rng.randrange(len(words))
                        words[at] = '"' + words[at] + '"'
                    if rng.random() < 0.2:
                        words[rng.randrange(len(words))] += ","
                    sentence = " ".join(words)
                    sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....?!;"))
                paragraph = " ".join(sentences)
                paragraphs.append(paragraph)
                size += len(paragraph) + 2
            url = f"https://{rng.choice(DOMAINS)}/{doc_id}"
            line = json.dumps({"id": doc_id, "url": url, "text": "\n\n".join(paragraphs)}, ensure_ascii=False)
            out.write(line + "\n")
            written += len(line.encode("utf-8")) + 1
    print(f"wrote {args.out}: {written / 1e9:.2f} GB, {doc_id} documents")


if __name__ == "__main__":
    main()
