#!/usr/bin/env python3
"""Allocation-heavy Python workload for the LD_PRELOAD comparison in
scripts/preload-tests.sh.  Run with PYTHONMALLOC=malloc so that every Python
object goes through the C allocator.  Prints a few deterministic lines and a
final digest; the output must be identical with and without the preload."""
import hashlib
import json
import random
import sys

rng = random.Random(20240607)
digest = hashlib.sha256()


def feed(label, value):
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    digest.update(label.encode())
    digest.update(text.encode())
    print(f"{label}: {hashlib.sha256(text.encode()).hexdigest()[:16]}")


# 1. a big dict of small objects, rebuilt and shrunk several times
table = {}
for i in range(60_000):
    table[f"key-{i:06d}-{rng.randrange(1 << 30)}"] = [i, str(i) * (i % 7), {"n": i % 97}]
for i, k in enumerate(list(table)):
    if i % 3 == 0:
        del table[k]
feed("dict", sorted((k, v[0], len(v[1]), v[2]["n"]) for k, v in table.items())[:2000])
feed("dict-size", len(table))

# 2. lists: sorting, slicing, growth by append and by concatenation
data = [rng.random() for _ in range(200_000)]
data.sort()
chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]
merged = []
for c in reversed(chunks):
    merged = merged + c[::3] if len(merged) < 5000 else merged
    merged.extend(c[1::7])
feed("lists", [round(sum(c), 6) for c in chunks[:50]] + [len(merged), round(sum(merged), 6)])

# 3. JSON round trips of nested documents of many sizes
docs = []
for i in range(1000):
    depth = rng.randrange(1, 6)
    doc = {"id": i, "tags": [f"t{rng.randrange(100)}" for _ in range(rng.randrange(20))]}
    node = doc
    for d in range(depth):
        node["child"] = {"level": d, "payload": "x" * rng.randrange(0, 2000), "nums": list(range(d * 10))}
        node = node["child"]
    docs.append(doc)
blob = json.dumps(docs, sort_keys=True)
back = json.loads(blob)
assert back == docs
feed("json", [len(blob), sum(len(d["tags"]) for d in back)])

# 4. strings: building, splitting, joining, replacing, formatting
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(1, 12)))
         for _ in range(25_000)]
text = " ".join(words)
counts = {}
for w in text.split():
    counts[w] = counts.get(w, 0) + 1
top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:100]
rewritten = text.replace("a", "AA").replace("e", "").upper()
feed("strings", [top, len(rewritten), rewritten[:200]])

# 5. sets, tuples, bytes and bytearrays
s1 = {(i * 7919) % 100_003 for i in range(150_000)}
s2 = {(i * 104_729) % 100_003 for i in range(120_000)}
ba = bytearray()
for i in range(20_000):
    ba += bytes([i % 256]) * (i % 50)
feed("sets-bytes", [len(s1 & s2), len(s1 | s2), len(s1 ^ s2), len(ba),
                    hashlib.sha256(bytes(ba)).hexdigest()])

# 6. many short-lived objects of mixed sizes in a churn loop
live = []
total = 0
for i in range(100_000):
    size = 1 << rng.randrange(0, 14)
    obj = "y" * size if i % 2 else [0] * (size // 8 + 1)
    live.append(obj)
    if len(live) > 500:
        total += len(live.pop(rng.randrange(len(live))))
feed("churn", total)

print("digest:", digest.hexdigest())
sys.exit(0)
