"""Refined benchmarks (CoLLM §4.2, supplementary §8.2): validate every triplet of a CIRR / Fashion-IQ split with
an MLLM against hard negatives, regenerate the modification text of the ambiguous ones coarse → fine,
re-validate, and drop what stays ambiguous. One stage per module (file name = stage name); `common` holds what
they share and `candidate_strip` the image the validation shows.

Stages (each keyed, sharded and resumable like every other stage; a validation round is a stage, so an
interrupted refinement resumes at the round and shard it stopped in):

    ingest ─► embed_images ─► refine_candidates ─► refine_validate(level 0: original text)
                                                        ├─► refine_regenerate (pending triplets: L texts)
                                                        └─► refine_validate(level 1) ─► … ─► refine_validate(level L)
                                                                                               └─► refine_benchmark
"""
