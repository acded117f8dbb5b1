"""Everything learned: corpora, label sets, encoders, the incremental multimodal DAG, training and evaluation."""
