"""Real-kernel oracles: run scenarios on this machine's kernel and compare with the model."""
