"""Performance measurements of superres-pipeline (``make bench``; see benchmarks/README.md)."""
