"""Regenerate the embedded SYNTHETIC MovieLens-format sample in sbrjob/sample/ (deterministic)."""

from pathlib import Path

from sbrjob.synthetic import write_movielens_sample

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "sbrjob" / "sample"
    write_movielens_sample(out)
    print(f"wrote {out}/ratings.dat.gz and movies.dat")
