"""Training-data build stages (MTCIR, InstructCIR, MVFT-JI): one stage per module, file name = stage name.

    ingest_collection ─► pair_groups (MTCIR) | random_pairs (InstructCIR) ─► caption_collection
                      ─► mtcir_texts | instructcir_texts | mvft_texts ─► release

`common` holds what the MLLM text stages share (request cache, failure classification, word counts).
"""
