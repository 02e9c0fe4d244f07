"""MVFT-JI stages (mvft-ji.txt §3.2-3.4): training rows, token features of gallery images and queries, token-level
retrieval and joint fusion. One stage per module; `tokens` holds the token-feature table format they share."""
