"""Features: the text encoder, acoustic and face features, dialogue feature batches, the paired set."""
