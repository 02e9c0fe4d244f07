"""Benchmark-run stages: ingest → embed / compose / caption / synthesize → retrieve | fuse_scores → evaluate."""
