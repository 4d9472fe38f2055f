"""Synthetic interaction logs with learnable sequential structure (clearly not real data).

Items form a ring of "genres"; a user walks mostly forward along a random item chain, with
popularity-skewed jumps. So a sequence model can beat most-popular, which makes the embedded
sample a meaningful smoke test. Used for the packaged sample and for scale benchmarks.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Thriller", "Romance", "Animation", "Documentary"]


def item_chain(n_items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random successor for every item and Zipf-like popularity weights."""
    successor = rng.permutation(n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    return successor, popularity / popularity.sum()


def walk_sessions(lengths: np.ndarray, n_items: int, rng: np.random.Generator, follow: float = 0.8) -> np.ndarray:
    """Concatenated item sequences: each step follows the chain with prob `follow`, else jumps by popularity.

    Vectorised over sessions: step t of every session long enough is drawn at once.
    """
    successor, popularity = item_chain(n_items, rng)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    current = rng.choice(n_items, size=len(lengths), p=popularity)
    for t in range(int(lengths.max())):
        alive = lengths > t
        idx = starts[alive] + t
        out[idx] = current[alive]
        jump = rng.random(alive.sum()) > follow
        nxt = successor[current[alive]]
        nxt[jump] = rng.choice(n_items, size=int(jump.sum()), p=popularity)
        current[alive] = nxt
    return out


def movielens_sample(n_users: int = 400, n_items: int = 300, mean_len: int = 30, seed: int = 7) -> tuple[list[str], list[str]]:
    """Lines of a MovieLens-1M style ratings.dat and movies.dat."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.geometric(1.0 / mean_len, size=n_users), 5, 4 * mean_len)
    items = walk_sessions(lengths, n_items, rng) + 1  # MovieIDs start at 1
    t0 = 956_703_932  # April 2000, like ML-1M
    ratings = []
    pos = 0
    for user, length in enumerate(lengths, start=1):
        start = t0 + int(rng.integers(0, 1000 * 86400))
        times = start + np.cumsum(rng.integers(30, 3 * 86400, size=length))
        stars = rng.integers(1, 6, size=length)
        for item, ts, r in zip(items[pos:pos + length], times, stars):
            ratings.append(f"{user}::{item}::{r}::{ts}")
        pos += length
    movies = [f"{i}::Synthetic Movie {i} ({1950 + i % 50})::{GENRES[i % len(GENRES)]}|{GENRES[(i * 7) % len(GENRES)]}"
              for i in range(1, n_items + 1)]
    return ratings, movies


def write_movielens_sample(directory: Path, **kwargs) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    ratings, movies = movielens_sample(**kwargs)
    with gzip.GzipFile(directory / "ratings.dat.gz", "wb", mtime=0) as fh:  # mtime=0: byte-identical output
        fh.write(("\n".join(ratings) + "\n").encode())
    (directory / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
