"""fastText training in a bare process: `python -m filters.fasttext_fit JOB_JSON`.

fastText 0.9.2 (fasttext-numpy2-wheel) does not train the same model in every process. Measured on one train file
with thread=1 and a fixed seed: six bare processes gave one model file; with `import datatrove.executor` or
`import filters.train` (numpy, torch, pydantic...) before training, two runs gave two different models, or
"Encountered NaN". What a process loaded first decides the result, so this module imports fastText and the
standard library only, and rephrase.train runs it in a fresh interpreter per training.
"""

import json
import sys


def fit(job: dict) -> None:
    import fasttext

    p = job["params"]
    model = fasttext.train_supervised(
        input=job["train_file"], dim=p["dim"], epoch=p["epoch"], lr=p["lr"], wordNgrams=p["word_ngrams"],
        minCount=p["min_count"], bucket=p["bucket"], seed=p["seed"], thread=p["thread"], verbose=0,
    )  # fmt: skip
    if job["cutoff"] is not None:
        # retrain: after pruning to the `cutoff` rows with the largest norms, fine-tune what is left
        model.quantize(input=job["train_file"], qnorm=True, cutoff=job["cutoff"], retrain=True, thread=p["thread"])
    model.save_model(job["out"])


if __name__ == "__main__":
    fit(json.loads(sys.argv[1]))
