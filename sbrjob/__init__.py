"""sbrjob: session-based next-item recommenders (GRU4Rec) trained and evaluated as batch jobs."""

__version__ = "0.1.0"
