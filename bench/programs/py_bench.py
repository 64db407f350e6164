#!/usr/bin/env python3
"""Whole-program allocator workload: CPython dict/list/str/JSON churn.

Run with PYTHONMALLOC=malloc so that every Python object allocation goes
through the C allocator under test (instead of CPython's pymalloc arenas).

    PYTHONMALLOC=malloc python3 py_bench.py [scale]

The scale (argument, else $WORKLOAD_SCALE, else 1.0) multiplies the amount of
work.  The last line printed is "checksum py_json scale=S HEX", computed from
the data only (never from ids, addresses or hash() values), so it is the same
under every allocator.
"""

import hashlib
import json
import os
import random
import sys


def scale_arg():
    raw = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.environ.get("WORKLOAD_SCALE", "1.0")
    try:
        value = float(raw)
    except ValueError:
        sys.exit(f"bad scale {raw!r}")
    if not 0 < value <= 1000:
        sys.exit(f"bad scale {raw!r}")
    return value


WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho",
    "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
]


def make_record(rng, i):
    """A JSON-ish record of nested dicts, lists and strings of varied sizes."""
    tags = [rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(rng.randrange(1, 8))]
    return {
        "id": i,
        "name": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6))),
        "score": rng.randrange(1_000_000) / 1000.0,
        "tags": tags,
        "attrs": {rng.choice(WORDS): rng.randrange(1000) for _ in range(rng.randrange(0, 6))},
        "history": [[rng.randrange(100), rng.choice(WORDS)] for _ in range(rng.randrange(0, 10))],
        "note": "x" * rng.randrange(0, 300),
    }


def round_trip(records):
    """Serialise and parse a batch, then aggregate over the parsed copy."""
    text = json.dumps(records, sort_keys=True)
    parsed = json.loads(text)
    by_tag = {}
    for rec in parsed:
        for tag in rec["tags"]:
            bucket = by_tag.setdefault(tag, [])
            bucket.append(rec["id"])
    summary = sorted((tag, len(ids), sum(ids) % 9973) for tag, ids in by_tag.items())
    return text, summary


def index_words(rng, n):
    """Build and prune a word -> positions index made of many small objects."""
    index = {}
    for pos in range(n):
        word = rng.choice(WORDS) + rng.choice(WORDS)[: rng.randrange(1, 5)] + str(pos % 97)
        index.setdefault(word, []).append(pos)
        if pos % 1000 == 999:
            # drop a few keys so the dict shrinks and regrows
            for key in [k for k in index if len(index[k]) > 40][:20]:
                del index[key]
    return sorted((k, len(v), v[-1]) for k, v in index.items())


def main():
    scale = scale_arg()
    rng = random.Random(20240521)
    digest = hashlib.sha256()
    batches = max(1, int(round(20 * scale)))
    live = []  # some batches stay alive for a while
    for b in range(batches):
        records = [make_record(rng, b * 1000 + i) for i in range(400)]
        text, summary = round_trip(records)
        digest.update(hashlib.sha256(text.encode()).digest())
        digest.update(repr(summary).encode())
        live.append(records)
        if len(live) > 8:
            live.pop(rng.randrange(len(live)))
    words = index_words(rng, max(1000, int(round(50_000 * scale))))
    digest.update(repr(words).encode())
    digest.update(str(sum(len(r) for batch in live for r in batch)).encode())
    print(f"checksum py_json scale={scale:g} {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
