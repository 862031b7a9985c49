"""What is computed from the stimuli: image features of a backbone (cached, memory-mapped),
captions of a captioner (resumable cache) and text embeddings of a text encoder."""
