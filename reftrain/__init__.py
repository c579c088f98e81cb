"""reftrain: a Flax trainer for MegaBeam-Mistral-7B's long-context recipe."""
