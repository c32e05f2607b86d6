"""Generation: the decode loop, slots and prompt cache, sampling, embeddings."""
