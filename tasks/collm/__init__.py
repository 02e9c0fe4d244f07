"""CoLLM's stored stages beyond training (collm.txt §3): gallery and composed-query features of a trained CoLLM,
as embeddings tables the shared `retrieve` stage ranks."""
