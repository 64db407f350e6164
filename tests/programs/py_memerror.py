"""py_memerror.py - Python at an allocation limit.

Run under a malloc with a budget, e.g.
    CHUNKMALLOC_BUDGET=64MiB PYTHONMALLOC=malloc \
        LD_PRELOAD=libchunkmalloc.so python3 py_memerror.py

1. Appends 1 MiB bytearrays to a list until MemoryError; catches it.
2. With those still held, a huge list and a huge bytes object must also
   fail with MemoryError (not crash).
3. Drops everything, then builds modest objects again (an 8 MiB bytearray,
   100000 strings in a list, a dict) and checks them.

Prints
    py_memerror: MemoryError after N MiB; recovered
and exits 0.  Without a limit it gives up after 2 GiB (exit status 2), so
that running it by mistake does not exhaust the machine.
"""

import gc
import sys

MIB = 1 << 20
GIVE_UP_MIB = 2048


def fill_until_memory_error():
    held = []
    try:
        while len(held) < GIVE_UP_MIB:
            block = bytearray(MIB)
            block[0] = len(held) & 0xFF
            block[-1] = 0xA5
            held.append(block)
    except MemoryError:
        return held, True
    return held, False


def expect_memory_error(what, make):
    try:
        obj = make()
    except MemoryError:
        return
    del obj
    print(f"py_memerror: {what} did not raise MemoryError", file=sys.stderr)
    sys.exit(3)


def main():
    held, hit = fill_until_memory_error()
    reached = len(held)
    if not hit:
        print(f"py_memerror: no MemoryError after {reached} MiB; is there a limit?", file=sys.stderr)
        sys.exit(2)
    for i, block in enumerate(held):
        if block[0] != i & 0xFF or block[-1] != 0xA5 or len(block) != MIB:
            print(f"py_memerror: block {i} corrupted", file=sys.stderr)
            sys.exit(4)

    expect_memory_error("a list of 256 Mi items", lambda: [None] * (256 * MIB))
    expect_memory_error("a 512 MiB bytes object", lambda: b"x" * (512 * MIB))

    del held
    gc.collect()

    again = bytearray(8 * MIB)
    again[-1] = 1
    words = [str(i) * 3 for i in range(100000)]
    table = {w: len(w) for w in words[:50000]}
    if sum(again) != 1 or len(words) != 100000 or table["999" * 3] != 9:
        print("py_memerror: objects built after the MemoryError are wrong", file=sys.stderr)
        sys.exit(5)
    del again, words, table

    print(f"py_memerror: MemoryError after {reached} MiB; recovered")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
