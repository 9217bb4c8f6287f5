"""A brute-force reference for the character-prediction labels: a symbol may follow a prefix iff some completion of at
most `max_completion` symbols makes a word (checked by the language's membership test alone); END iff the prefix is a
word. The class is the bitmask over the symbols, END last."""
import itertools

import numpy as np


def reference_classes(word, num_symbols: int, member, max_completion: int) -> np.ndarray:
    """word (T,) symbols -> (T,) the class of the set that may follow each prefix."""
    tails = [w for k in range(max_completion + 1) for w in itertools.product(range(num_symbols), repeat=k)]
    out = []
    for t in range(1, len(word) + 1):
        prefix = tuple(int(s) for s in word[:t])
        bits = [any(member(prefix + (s,) + w) for w in tails) for s in range(num_symbols)] + [member(prefix)]
        out.append(sum(1 << i for i, b in enumerate(bits) if b))
    return np.array(out)
