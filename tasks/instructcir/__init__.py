"""InstructCIR's stored stages beyond training (instructcir.txt §II): target-image and query features of a trained
reformulation network (or its λ combiner), as embeddings tables the shared `retrieve` stage ranks."""
